"""The clip shards `vaerr preprocess` writes and training reads (any fsspec URI).

Layout under the shards root R (one file per video id, so reruns replace, never duplicate):

    R/clips/<video_id>.parquet      schemas.tables.CLIP_SHARD: one row per (kept track, frame),
                                    sorted by (track_id, frame_index), row groups of
                                    data.row_group_frames frames (clip reads skip the rest)
    R/sequences/<video_id>.parquet  schemas.tables.SEQUENCES: one row per kept track
    R/videos/<video_id>.parquet     schemas.tables.PREPROCESS_STATUS (written last: commits)
    R/config.yaml, R/preprocess.json

A sequence's frames are consecutive analysis frames first_frame .. first_frame + n_frames - 1
(the face pipeline interpolates gaps inside a track), so a clip is a frame range.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.status import StatusRows
from pipeline.storage import Storage, join, read_parquet, read_tables
from schemas.config import StorageConfig
from schemas.tables import PREPROCESS_STATUS, SEQUENCES, SYNTHETIC

log = logging.getLogger(__name__)

CLIPS_DIR, SEQUENCES_DIR, STATUS_DIR = "clips", "sequences", "videos"


def shard_status(root: str) -> StatusRows:
    """Where `vaerr preprocess`'s status rows live (R/videos/) and how they read back (columns
    added later null in older status files; an unreadable file skipped with a warning)."""
    added = ("annotated_frames", "failure_kind", "attempts")
    return StatusRows(join(root, STATUS_DIR), PREPROCESS_STATUS, added)


def read_shard_status(root: str, storage: StorageConfig | Storage | None = None) -> pa.Table:
    """Every committed video's status row under R/videos/."""
    return shard_status(root).read(Storage.of(storage))


def read_sequences(
    root: str, storage: StorageConfig | None = None, splits: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """Sequences of committed videos (status ok), optionally of some splits only, sorted by
    (video_id, track_id); each row gains `shard_uri` (absolute)."""
    status = read_shard_status(root, storage).to_pylist()
    done = {r["video_id"] for r in status if r["status"] == "ok"}
    seqs = read_tables(join(root, SEQUENCES_DIR), SEQUENCES, storage, ("synthetic",))
    rows = [
        r
        for r in seqs.to_pylist()
        if r["video_id"] in done and (splits is None or r["split"] in splits)
    ]
    for r in rows:
        r["shard_uri"] = join(root, r["shard"])
    return sorted(rows, key=lambda r: (r["video_id"], r["track_id"]))


def training_data(seqs: list[dict[str, Any]]) -> str | None:
    """What a model trained on these sequences learnt from, for its checkpoint's provenance:
    "synthetic" when any is rendered faces (a demo model: the outputs must say so), else the
    dataset name(s) ("sewa", "recola+sewa"), None when unknown (no sequences)."""
    if any(s.get("synthetic") for s in seqs):
        return SYNTHETIC
    names = sorted({str(s["dataset"]) for s in seqs if s.get("dataset")})
    return "+".join(names) or None


def crops_from_binary(col: pa.ChunkedArray | pa.Array, size: int) -> np.ndarray:
    """A binary column of size*size gray crops -> uint8 [N, size, size] (one copy)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, size, size), np.uint8)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], np.uint8)[offsets[0] : offsets[-1]]
    if data.size != n * size * size:
        raise ValueError(f"crops are not all {size}x{size} ({data.size} bytes for {n} rows)")
    return data.reshape(n, size, size).copy()


def floats_from_list(col: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """A list<float32> column of equal-length rows -> float32 [N, D]; None if any is null."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0 or arr.null_count:
        return None
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(arr), -1)


def read_frames(
    shard_uri: str,
    track_id: int,
    first: int,
    count: int,
    storage: StorageConfig | None = None,
    audio: bool = False,
    crop_size: int = 96,
) -> dict[str, np.ndarray]:
    """Frames first .. first+count-1 of one track of one shard file.

    Returns crops uint8 [n, S, S], frame_index int32 [n], arousal / valence float32 [n]
    (NaN = unlabelled) and, with `audio`, audio_feat float32 [n, D] (absent when the video
    had none). Row groups outside the range are not read.
    """
    cols = ["track_id", "frame_index", "crop", "arousal", "valence"]
    if audio:
        cols.append("audio_feat")
    filt = [
        ("track_id", "=", int(track_id)),
        ("frame_index", ">=", int(first)),
        ("frame_index", "<", int(first + count)),
    ]
    t = read_parquet(shard_uri, storage, columns=cols, filters=filt)
    t = t.sort_by("frame_index")
    out = {
        "crops": crops_from_binary(t.column("crop"), crop_size),
        "frame_index": t.column("frame_index").to_numpy().astype(np.int32),
        "arousal": t.column("arousal").to_numpy(zero_copy_only=False).astype(np.float32),
        "valence": t.column("valence").to_numpy(zero_copy_only=False).astype(np.float32),
    }
    if audio:
        feats = floats_from_list(t.column("audio_feat"))
        if feats is not None:
            out["audio_feat"] = feats
    return out


def read_sequence(
    seq: dict[str, Any],
    storage: StorageConfig | None = None,
    audio: bool = False,
    crop_size: int = 96,
) -> dict[str, np.ndarray]:
    """All frames of one sequence row (see read_frames)."""
    return read_frames(
        seq["shard_uri"],
        seq["track_id"],
        seq["first_frame"],
        seq["n_frames"],
        storage,
        audio,
        crop_size,
    )


def clip_specs(
    sequences: list[dict[str, Any]],
    clips_per_file: int,
    labelled_only: bool = True,
    require_audio: bool = False,
) -> list[dict[str, Any]]:
    """Rows of the training dataset: each sequence repeated `clips_per_file` times (slot
    0..k-1); the clip position is drawn when the row is loaded (`ClipLoader`). Sequences
    without labels (`labelled_only`) or without audio (`require_audio`) are left out."""
    keep = ("shard_uri", "video_id", "track_id", "first_frame", "n_frames")
    out = []
    for s in sequences:
        if (labelled_only and not s["labelled_frames"]) or (require_audio and not s["has_audio"]):
            continue
        for k in range(clips_per_file):
            out.append({**{x: s[x] for x in keep}, "slot": k})
    return out


class ClipLoader:
    """Clip-spec rows -> fixed-length training clips (a Ray Data `map_batches` callable; no
    Ray import, so it also runs in-process).

    For each row, a random window of `clip_frames` frames is drawn inside the sequence (the
    whole sequence when shorter: clips shorter than the clip length are used whole) and read
    from its shard. Output columns: crops uint8 [B, T, S, S], arousal / valence float32
    [B, T] (NaN past `length` and where unlabelled), length int32 [B], and with `audio`
    audio_feat float32 [B, T, D] (zeros past `length`). Clip positions come from a generator
    seeded by `seed` and fresh entropy: Ray Data re-runs the loader each epoch without
    telling it which one, and the same positions every epoch would defeat the sampling.
    A loader that knows its epoch (`reseed`) draws reproducible positions instead.

    With `cache`, each sequence is read whole the first time one of its clips is asked for
    and kept in memory; later clips are slices (the in-memory path of training: a corpus
    that fits is read once per worker, not once per clip and epoch).
    """

    def __init__(
        self,
        clip_frames: int,
        storage: StorageConfig | None = None,
        audio: bool = False,
        crop_size: int = 96,
        seed: int | None = None,
        audio_dim: int = 0,
        cache: bool = False,
    ) -> None:
        self.clip_frames = clip_frames
        self.storage = storage
        self.audio = audio
        self.size = crop_size
        self.audio_dim = audio_dim
        self.cache: dict[tuple[str, int, int], dict[str, np.ndarray]] | None = {} if cache else None
        entropy = np.random.SeedSequence().entropy
        self.rng = np.random.default_rng([seed or 0, int(entropy) & ((1 << 63) - 1)])

    def reseed(self, *keys: int) -> None:
        """Draw the next clip positions from a generator seeded by `keys` alone (e.g. seed,
        epoch, rank): reproducible sampling where the caller knows the epoch."""
        self.rng = np.random.default_rng([int(k) for k in keys])

    def _frames(
        self, uri: str, track: int, first: int, total: int, start: int, count: int
    ) -> dict[str, np.ndarray]:
        """Frames start .. start+count-1 of the sequence (track, first, total) of `uri`: read
        from the shard, or sliced from the cached whole sequence."""
        if self.cache is None:
            return read_frames(uri, track, start, count, self.storage, self.audio, self.size)
        key = (uri, track, first)
        seq = self.cache.get(key)
        if seq is None:
            seq = read_frames(uri, track, first, total, self.storage, self.audio, self.size)
            self.cache[key] = seq
        lo, hi = np.searchsorted(seq["frame_index"], [start, start + count])
        return {k: v[lo:hi] for k, v in seq.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["shard_uri"])
        t, s = self.clip_frames, self.size
        crops = np.zeros((n, t, s, s), np.uint8)
        aro = np.full((n, t), np.nan, np.float32)
        val = np.full((n, t), np.nan, np.float32)
        length = np.zeros(n, np.int32)
        feats: list[np.ndarray | None] = []
        for i in range(n):
            total = int(batch["n_frames"][i])
            count = min(t, total)
            first = int(batch["first_frame"][i])
            start = first + int(self.rng.integers(0, total - count + 1))
            uri, track = str(batch["shard_uri"][i]), int(batch["track_id"][i])
            fr = self._frames(uri, track, first, total, start, count)
            m = len(fr["frame_index"])
            crops[i, :m] = fr["crops"]
            aro[i, :m] = fr["arousal"]
            val[i, :m] = fr["valence"]
            length[i] = m
            feats.append(fr.get("audio_feat"))
        out = {"crops": crops, "arousal": aro, "valence": val, "length": length}
        if self.audio:
            d = self.audio_dim or next((f.shape[1] for f in feats if f is not None), 0)
            af = np.zeros((n, t, d), np.float32)
            for i, f in enumerate(feats):
                if f is not None:
                    af[i, : len(f)] = f
            out["audio_feat"] = af
        return out


def specs_memory_mb(specs: list[dict[str, Any]], crop_size: int = 96) -> float:
    """Memory the distinct sequences of `specs` take when held whole (ClipLoader's cache), MB
    (crops only: labels and audio features are a few % of it)."""
    seqs = {(s["shard_uri"], s["track_id"], s["first_frame"]): s["n_frames"] for s in specs}
    return sum(seqs.values()) * crop_size * crop_size / 2**20


def load_clip_batch(batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
    """Ray Data task: ClipLoader over one batch of clip specs (see ClipLoader). It lives here,
    not beside the training loop: each Ray worker that runs it imports this module (0.5 s),
    not torch and the loop (2.4 s)."""
    return ClipLoader(**kwargs)(batch)
