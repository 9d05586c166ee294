"""The demo behind `make demo`, end to end and honest: a synthetic corpus -> `vaerr
preprocess` -> `vaerr finetune` (ssvaerr_tiny, Ray Train) -> `vaerr infer` on synthetic
videos of people the network never saw -> CCC of the written timelines against the rendered
truth.

Everything runs through the same functions as the commands (run_preprocess, run_training,
run_inference) with jobs/configs/synthetic.yaml's CPU-sized settings: the corpus is sharded in
this process (`vaerr preprocess --local`), then one local Ray serves Ray Train and the
inference job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.outpaths import OutPaths
from pipeline.outputs.report import write_report
from pipeline.raysetup import ray_session
from pipeline.runner import run_inference
from pipeline.weights import seed_cache
from schemas.config import VaerrConfig
from training.loop import run_training
from training.metrics import ccc
from training.preprocess import run_preprocess
from training.synth import make_corpus, write_synthetic_video

log = logging.getLogger(__name__)

FRAME_SIZE = (240, 320)
"""Height, width of every demo video (corpus and unseen), px: faces of ~120 px."""


def default_assets() -> Path:
    """$VAERR_ASSETS, else ../shared/assets beside the working directory's repo."""
    return Path(os.environ.get("VAERR_ASSETS", Path.cwd().parent / "shared" / "assets"))


def make_videos(
    out: Path, videos: int, seconds: float, seed: int, size: tuple[int, int] = FRAME_SIZE
) -> list[dict[str, Any]]:
    """Synthetic single-face videos with known arousal/valence (the last one has two faces),
    of people drawn from `seed` (not the corpus's)."""
    out.mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(videos):
        n_faces = 2 if i == videos - 1 and videos > 1 else 1
        path = out / f"synthetic_{i:02d}.mp4"
        truth = write_synthetic_video(
            path,
            seed=seed + i,
            seconds=seconds,
            size=size,
            n_faces=n_faces,
            labels_csv=out / f"synthetic_{i:02d}.csv",
        )
        truths.append(truth)
    return truths


DEMO_RAY_INIT: dict[str, Any] = {"include_dashboard": False}
"""ray.init settings of the demo's own Ray (a caller's `ray_init` adds to them)."""

MAX_VALIDATION_PEOPLE = 40
"""Enough people to choose the best epoch by; every person beyond trains (a third of a
small corpus validates)."""


def validation_split(
    identities: int, validation_people: int | None = None
) -> tuple[float, float, float]:
    """The corpus's (train, validation, test) fractions: `validation_people` of the
    `identities` validate (choose the best epoch; default a third, at most
    MAX_VALIDATION_PEOPLE), the rest train; none held out (the unseen people are rendered
    apart)."""
    if validation_people is None:
        validation_people = min(MAX_VALIDATION_PEOPLE, max(1, identities // 3))
    if not 0 < validation_people < identities:
        raise ValueError(f"validation_people must be in 1..{identities - 1}: {validation_people}")
    val = validation_people / identities
    return (1.0 - val, val, 0.0)


def render_workers() -> int:
    """Processes that render the corpus: every core (rendering is single-threaded numpy and
    nothing else runs meanwhile), at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def render_unseen(
    out: Path, videos: int, seconds: float, seed: int, size: tuple[int, int], runner: str
) -> Callable[[], list[dict[str, Any]]]:
    """Start rendering the unseen videos (make_videos) and return a function that waits for
    their truths. With Ray they render in a task of half a CPU (one core in practice) while the
    driver shards the corpus on the other; locally they render when waited for."""
    if runner != "ray":
        return lambda: make_videos(out, videos, seconds, seed, size)
    import ray

    task = ray.remote(num_cpus=0.5)(make_videos).remote(out, videos, seconds, seed, size)
    return lambda: ray.get(task)


def truth_pairs(out: str, truths: list[dict[str, Any]]) -> dict[str, list]:
    """Per unseen single-face video (track 0): {dim: [(prediction [N], truth [N]), ...]}, the
    truth interpolated at the timeline's times."""
    t = pq.read_table(OutPaths(out).timelines).to_pandas()
    pairs: dict[str, list] = {"arousal": [], "valence": []}
    for truth in truths:
        if np.ndim(truth["arousal"]) != 1:
            continue
        g = t[t.uri.str.endswith(Path(truth["path"]).name) & (t.track_id == 0)]
        if g.empty:
            continue
        for k in pairs:
            gold = np.interp(g.time_s.to_numpy(), truth["time_s"], truth[k])
            pairs[k].append((g[k].to_numpy(np.float64), gold))
    return pairs


def ccc_interval(
    pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % bootstrap interval of the pooled CCC over videos: videos (people) are resampled
    with replacement, since they, not frames, are the independent units. None for < 3 videos."""
    if len(pairs) < 3:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(pairs), len(pairs))
        p = np.concatenate([pairs[i][0] for i in pick])
        g = np.concatenate([pairs[i][1] for i in pick])
        stats.append(ccc(p, g))
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


QUIET_MINUTES = 3.5
"""Wall minutes of the default demo on a quiet 2-core CPU (3.5-3.8 measured, README)."""


def estimated_minutes(
    base: float = QUIET_MINUTES, cpus: int | None = None, load: float | None = None
) -> float:
    """Rough wall time of the default demo here: `base` minutes on a quiet 2-core machine,
    scaled by sqrt((load + 2) / cores), never below 1. The square root: the 1-minute load
    average overstates the share other work takes over a run of minutes
    (measured on 2 cores: load 3.3 -> 1.4x, load 6.2 -> 1.9x, where (load + 2) / 2 said 2.7x
    and 4.1x)."""
    cpus = cpus or os.cpu_count() or 2
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return base * max(1.0, (load + 2.0) / cpus) ** 0.5


def truth_ccc(out: str, truths: list[dict[str, Any]], fps: float) -> dict[str, float]:
    """CCC of the written timelines against the rendered truth (single-face videos, track 0,
    all videos concatenated: the AVEC convention)."""
    pairs = truth_pairs(out, truths)
    return {
        k: ccc(np.concatenate([p for p, _ in v]), np.concatenate([g for _, g in v]))
        for k, v in pairs.items()
        if v
    }


def demo_config(cfg: VaerrConfig, root: Path) -> VaerrConfig:
    """`cfg` with the demo's paths: corpus, shards and runs under `root`."""
    corpus = root / "corpus"
    data = cfg.data.model_copy(
        update={
            "dataset": "generic",
            "videos": str(corpus),
            "labels": str(corpus / "labels.csv"),
            "manifest": str(corpus / "manifest.csv"),
            "shards": str(root / "shards"),
        }
    )
    train = cfg.train.model_copy(update={"storage_path": str(root / "runs")})
    return cfg.model_copy(update={"data": data, "train": train})


def run_demo(
    cfg: VaerrConfig,
    out: str,
    videos: int = 12,
    seconds: float = 6.0,
    seed: int = 7,
    runner: str = "ray",
    ray_init: dict[str, Any] | None = None,
    identities: int = 320,
    videos_per_identity: int = 1,
    validation_people: int | None = None,
    train_seconds: float = 0.44,
    size: tuple[int, int] = FRAME_SIZE,
) -> dict[str, Any]:
    """Generate, train, score and report; returns the inference summary plus `ccc` (unseen
    videos vs truth), `ccc_interval` (95 % over the unseen videos), `training` (the
    fine-tuning summary) and `report` (the HTML report of the run). `seed` seeds the corpus,
    the unseen people, the weights, clip order and augmentations (train.seed) and this
    process's RNGs; the lossy encodes of the rendered videos are not byte-reproducible, so
    runs with one seed agree closely, not bit for bit."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
    root = Path(out).resolve()
    assets = default_assets()
    if assets.is_dir():
        copied = seed_cache(assets, cfg.cache_dir)
        if copied:
            log.info("seeded the weights cache from %s: %s", assets, ", ".join(copied))
    cfg = demo_config(cfg, root)
    log.info("rendering the training corpus: %d people x %d videos x %.2f s",
             identities, videos_per_identity, train_seconds)  # fmt: skip
    # The corpus renders in worker processes (started from a thread) while Ray starts; one
    # Ray serves training and inference (they join it rather than start their own), without
    # the dashboard, whose processes would take a share of the two cores the whole run.
    session = ray_session(None, {**DEMO_RAY_INIT, **(ray_init or {})})
    with ThreadPoolExecutor(1) as pool:
        corpus = pool.submit(
            make_corpus, root / "corpus", identities, videos_per_identity, train_seconds,
            seed, validation_split(identities, validation_people), size=size,
            with_audio=False, workers=render_workers(),
        )  # fmt: skip
        with session if runner == "ray" else contextlib.nullcontext():
            corpus.result()
            # The unseen people render on one core while this process shards the corpus on
            # the other. Sharding runs in process: hundreds of sub-second videos cost Ray's
            # actors more to start and schedule than to shard (36 s on Ray, 17 s here:
            # bench/RESULTS.md).
            unseen = render_unseen(root / "videos", videos, seconds, seed + 10_000, size, runner)
            shards = run_preprocess(cfg, runner="local")
            log.info("shards: %s", shards)
            training = run_training(cfg, "finetune", runner=runner)
            ckpt = training["product"]
            truths = unseen()
            summary = run_inference(cfg, [str(root / "videos")], str(root / "run"), ckpt,
                                    runner=runner)  # fmt: skip
    summary["ccc"] = truth_ccc(str(root / "run"), truths, cfg.video.fps)
    pairs = truth_pairs(str(root / "run"), truths)
    summary["ccc_interval"] = {k: ccc_interval(v, seed=seed) for k, v in pairs.items()}
    summary["unseen_videos"] = len(pairs["arousal"])
    report = root / "report.html"
    write_report(str(root / "run"), str(report), storage=cfg.storage, emotion=cfg.emotion)
    summary["report"] = str(report)
    summary["seed"] = seed
    best = training.get("best") or {}
    summary["training"] = {
        "checkpoint": ckpt,
        "epochs": cfg.train.epochs,
        "best_epoch": best.get("epoch"),
        "val_ccc_arousal": best.get("val/ccc_arousal"),
        "val_ccc_valence": best.get("val/ccc_valence"),
        "wall_s": training.get("wall_s"),
        "shards": shards["output"],
        "run": training["run"],
    }
    return summary
