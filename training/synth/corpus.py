"""Labels, synthetic video files and whole corpora with splits and a manifest.

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.storage import is_remote, local_path, upload_tree
from training.synth.identity import Identity, sample_identity
from training.synth.motion import AUDIO_RATE, sample_trajectory
from training.synth.speech import render_clip

# ---------------------------------------------------------------------------------------------
# Files: videos, labels, corpus
# ---------------------------------------------------------------------------------------------

LABEL_COLUMNS = ("video", "time_s", "arousal", "valence")
"""Generic CSV label format (the `generic` dataset reader); `face` is added for n_faces > 1."""


def label_rows(
    video: str, arousal: np.ndarray, valence: np.ndarray, fps: float
) -> Iterator[dict[str, Any]]:
    """One row per frame (and per face when the trajectories are [n_faces, T]).

    Columns: video, time_s (frame i at i / fps seconds), arousal, valence and, for several
    faces, `face` = left-to-right index of the face in the frame (0 = leftmost).
    """
    aro = np.atleast_2d(arousal)
    val = np.atleast_2d(valence)
    multi = np.ndim(arousal) == 2 and aro.shape[0] > 1
    for i in range(aro.shape[1]):
        for f in range(aro.shape[0]):
            row: dict[str, Any] = {
                "video": video,
                "time_s": round(i / fps, 6),
                "arousal": round(float(aro[f, i]), 6),
                "valence": round(float(val[f, i]), 6),
            }
            if multi:
                row["face"] = f
            yield row


def write_labels_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows in the generic CSV format ``video,time_s,arousal,valence[,face]``.

    The header comes from the first row's keys (in LABEL_COLUMNS order, then `face`).
    Returns the number of rows written.
    """
    it = iter(rows)
    first = next(it, None)
    cols = list(LABEL_COLUMNS)
    if first is not None and "face" in first:
        cols.append("face")
    n = 0
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        wr.writeheader()
        if first is not None:
            wr.writerow(first)
            n = 1
            for row in it:
                wr.writerow(row)
                n += 1
    return n


def write_synthetic_video(
    path: str | os.PathLike,
    seed: int,
    seconds: float,
    fps: float = 25,
    size: tuple[int, int] = (360, 640),
    n_faces: int = 1,
    with_audio: bool = False,
    *,
    identities: Sequence[Identity] | None = None,
    labels_csv: str | os.PathLike | None = None,
    video_name: str | None = None,
    lossless: bool = False,
    noise: float = 2.0,
) -> dict[str, Any]:
    """Render and encode one synthetic video; return its ground truth.

    Identities default to ``sample_identity`` draws from `seed` (pass `identities` to reuse a
    person across videos). With `with_audio` the faces talk and an AAC track is written.
    Returns a dict: path, seed, fps, n_frames, size, n_faces, identities (dicts), time_s [T],
    arousal / valence (float32 [T] for one face, [n_faces, T] for several, face 0 leftmost),
    audio_rate (None without audio). With `labels_csv`, also writes the generic label CSV
    (`video` column = `video_name`, default the file name).
    """
    from pipeline.encode import write_video

    root = np.random.SeedSequence([seed, 101])
    id_seq, traj_seq = root.spawn(2)
    if identities is None:
        identities = [sample_identity(np.random.default_rng(s)) for s in id_seq.spawn(n_faces)]
    identities = list(identities)
    n_faces = len(identities)
    n_frames = max(1, int(round(seconds * fps)))
    trajs = [
        sample_trajectory(n_frames, fps, np.random.default_rng(s)) for s in traj_seq.spawn(n_faces)
    ]
    aro = np.stack([a for a, _ in trajs])
    val = np.stack([v for _, v in trajs])
    frames, audio = render_clip(
        identities, aro, val, fps, size, seed=seed, speech=with_audio, noise=noise
    )
    write_video(path, frames, fps, lossless=lossless, audio=audio, audio_rate=AUDIO_RATE)
    out_a = aro[0] if n_faces == 1 else aro
    out_v = val[0] if n_faces == 1 else val
    name = video_name or Path(os.fspath(path)).name
    if labels_csv is not None:
        write_labels_csv(labels_csv, label_rows(name, out_a, out_v, fps))
    return {
        "path": os.fspath(path),
        "video": name,
        "seed": seed,
        "fps": fps,
        "n_frames": n_frames,
        "size": tuple(size),
        "n_faces": n_faces,
        "identities": [i.to_dict() for i in identities],
        "time_s": np.arange(n_frames) / fps,
        "arousal": out_a,
        "valence": out_v,
        "audio_rate": AUDIO_RATE if with_audio else None,
    }


def split_identities(
    n_identities: int, fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """Assign each identity index a split name (train/validation/test); no identity is shared.

    Counts are the rounded fractions, with at least one identity per split whose fraction is
    positive (when there are enough identities); the remainder goes to train.
    """
    names = ("train", "validation", "test")
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers, got {fractions}")
    fr = fr / fr.sum()
    counts = np.floor(fr * n_identities + 0.5).astype(int)
    for k in (1, 2):
        if fr[k] > 0 and counts[k] == 0 and n_identities >= 3:
            counts[k] = 1
    counts[0] = n_identities - counts[1] - counts[2]
    if counts[0] < 0:
        raise ValueError(f"cannot split {n_identities} identities as {fractions}")
    labels = [names[k] for k in range(3) for _ in range(counts[k])]
    order = rng.permutation(n_identities)
    out = [""] * n_identities
    for pos, idx in enumerate(order):
        out[idx] = labels[pos]
    return out


MANIFEST_COLUMNS = (
    "video",
    "identity",
    "split",
    "seed",
    "seconds",
    "fps",
    "n_frames",
    "n_faces",
    "has_audio",
    "synthetic",  # always true: rendered faces (training_data "synthetic" downstream)
)


def _corpus_video(job: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one corpus video (a top-level function so process pools can pickle it)."""
    info = write_synthetic_video(
        job["path"], job["seed"], job["seconds"], job["fps"], job["size"], 1, job["with_audio"],
        identities=[job["identity"]], video_name=job["video"], lossless=job["lossless"],
    )  # fmt: skip
    return info["arousal"], info["valence"], info["n_frames"]


def make_corpus(
    out_dir: str | os.PathLike,
    n_identities: int,
    videos_per_identity: int,
    seconds: float,
    seed: int,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    fps: float = 25,
    size: tuple[int, int] = (360, 640),
    with_audio: bool = True,
    lossless: bool = False,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Write a synthetic corpus and return its manifest (one dict per video, in file order).

    Layout under `out_dir` (a local folder, or any fsspec URI: written to a local temporary
    folder, then uploaded)::

        videos/id{III}_v{K}.mp4   one talking face per video (AAC audio with `with_audio`)
        labels.csv                generic CSV, `video` = path relative to out_dir, one row per
                                  frame at the video rate
        manifest.csv              video, identity, split, seed, seconds, fps, n_frames, ...
        identities.json           the Identity parameters per identity id

    Identities (not videos) are split train/validation/test, so evaluation is on unseen
    people. Deterministic from `seed` (also with `workers` > 1 processes). Cost: about 8 ms
    per 640x360 frame on one core, render + encode.
    """
    if isinstance(out_dir, str) and is_remote(out_dir):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vaerr_corpus_") as tmp:
            manifest = make_corpus(
                tmp, n_identities, videos_per_identity, seconds, seed, split_fractions, fps=fps,
                size=size, with_audio=with_audio, lossless=lossless, workers=workers,
            )  # fmt: skip
            upload_tree(tmp, out_dir)
        return manifest
    out = local_path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    id_seqs = np.random.SeedSequence([seed, 202]).spawn(n_identities)
    splits = split_identities(n_identities, split_fractions, np.random.default_rng([seed, 303]))
    idents = [sample_identity(np.random.default_rng(q)) for q in id_seqs]
    video = {"seconds": seconds, "fps": fps, "size": tuple(size), "with_audio": with_audio,
             "lossless": lossless}  # fmt: skip
    jobs, manifest = _plan(out, idents, splits, videos_per_identity, seed, video)
    results = _render_all(jobs, workers)
    all_rows: list[dict[str, Any]] = []
    for row, (aro, val, n_frames) in zip(manifest, results):
        row["n_frames"] = n_frames
        all_rows.extend(label_rows(row["video"], aro, val, fps))
    write_labels_csv(out / "labels.csv", all_rows)
    with open(out / "manifest.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        wr.writeheader()
        wr.writerows(manifest)
    info = {
        "seed": seed,
        "split_fractions": list(split_fractions),
        "identities": {f"id{i:03d}": ident.to_dict() for i, ident in enumerate(idents)},
    }
    with open(out / "identities.json", "w") as f:
        json.dump(info, f, indent=1)
    return manifest


def _plan(
    out: Path,
    idents: list[Any],
    splits: list[str],
    videos_per_identity: int,
    seed: int,
    video: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(render jobs, manifest rows) of every video, in file order. `video`: the settings all
    videos share (seconds, fps, size, with_audio, lossless). Each video's seed comes from
    (seed, identity, k), so the corpus is the same whatever the worker count."""
    jobs, manifest = [], []
    for i, ident in enumerate(idents):
        for k in range(videos_per_identity):
            rel = f"videos/id{i:03d}_v{k}.mp4"
            vseed = int(np.random.SeedSequence([seed, 404, i, k]).generate_state(1)[0] >> 1)
            jobs.append({"path": str(out / rel), "video": rel, "seed": vseed, **video,
                         "identity": ident})  # fmt: skip
            manifest.append({
                "video": rel, "identity": f"id{i:03d}", "split": splits[i], "seed": vseed,
                "seconds": video["seconds"], "fps": video["fps"], "n_frames": 0, "n_faces": 1,
                "has_audio": bool(video["with_audio"]), "synthetic": True,
            })  # fmt: skip
    return jobs, manifest


def _render_all(jobs: list[dict[str, Any]], workers: int) -> list[Any]:
    """Render every job ((arousal, valence, n_frames) each, in order), in `workers` spawned
    processes when more than one."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_corpus_video, jobs))
    return [_corpus_video(j) for j in jobs]
