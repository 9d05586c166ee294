"""Run the batch job: manifest -> FaceStage -> ModelStage -> TimelineWriter.

Two schedulers over the same stage objects: `run_local` loops them in-process (tests, one
machine without Ray), `run_ray` maps them over Ray Data actor pools (the default, laptop or
cluster). This is the only module that imports Ray (DESIGN.md principle 2).

Outputs (schemas.tables): OUT/timelines/<video_id>.parquet for ok videos, then
OUT/videos/<video_id>.parquet (the status row: written last, it commits the video), and
OUT/run.json. A video is done when its status row matches (source version, model_id,
config_hash); reruns skip done videos, `force` recomputes. One file per video id means a rerun
overwrites rather than duplicates, and a changed checkpoint or config recomputes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import atomic_write, write_text
from pipeline.manifest import list_inputs
from pipeline.progress import Progress
from pipeline.raysetup import start_ray
from pipeline.retry import with_retries
from pipeline.stages import END, WINDOW, FaceStage, ModelStage
from pipeline.status import FAILED, NO_FACE, OK
from pipeline.storage import filesystem, join
from pipeline.timeline import TrackAccumulator, timeline_rows
from schemas.config import VaerrConfig, config_dump, config_hash, config_yaml
from schemas.tables import BOX, CLIPS, TIMELINES, VIDEOS, conform

log = logging.getLogger(__name__)


@dataclass
class _Video:
    accs: dict[int, TrackAccumulator] = field(default_factory=dict)
    crops: list[pa.Table] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)  # (track_id, start) received
    end: dict[str, Any] | None = None


def _table_write(uri: str, table: pa.Table, cfg: VaerrConfig) -> None:
    def write() -> None:
        with atomic_write(uri, cfg.storage) as f:
            pq.write_table(table, f, compression="zstd")

    with_retries(write, cfg.storage.retry_s, f"writing {uri}")


def _remove(uri: str, cfg: VaerrConfig) -> None:
    """Delete a file if it exists (a stale result of an earlier run), retrying outages."""

    def rm() -> None:
        fs, path = filesystem(uri, cfg.storage)
        if fs.exists(path):
            fs.rm(path)

    with_retries(rm, cfg.storage.retry_s, f"removing {uri}")


class TimelineWriter:
    """Consumes model-stage batches in any order; when a video's end row and all its windows
    have arrived, blends its tracks and commits its files."""

    def __init__(self, cfg: VaerrConfig, out: str, model_id: str, untrained: bool) -> None:
        self.cfg = cfg
        self.out = out
        self.model_id = model_id
        self.untrained = untrained
        self.config_hash = config_hash(cfg)
        self.videos: dict[str, _Video] = {}
        self.counts = {OK: 0, NO_FACE: 0, FAILED: 0}
        self.frames = 0
        self.on_done: Any = None

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        """Take one batch of model-stage rows."""
        kinds = np.asarray(batch["kind"]).astype(str)
        for i, kind in enumerate(kinds):
            vid = str(batch["video_id"][i])
            state = self.videos.setdefault(vid, _Video())
            if kind == WINDOW:
                n = int(batch["n"][i])
                tid = int(batch["track_id"][i])
                key = (tid, int(batch["start"][i]))
                if key in state.seen:
                    continue  # a retried task re-sent it (a worker died): count it once
                state.seen.add(key)
                state.accs.setdefault(tid, TrackAccumulator()).add(
                    batch["frame_index"][i][:n],
                    batch["arousal"][i][:n],
                    batch["valence"][i][:n],
                    batch["box_xyxy"][i][:n],
                    batch["det_score"][i][:n],
                    batch["interpolated"][i][:n],
                )
                if "crops" in batch:
                    state.crops.append(self._crops(tid, batch, i, n))
            elif kind == END:
                state.end = {k: batch[k][i] for k in batch if k not in ("crops",)}
            if state.end is not None and len(state.seen) >= int(state.end["windows"]):
                self._commit(vid, self.videos.pop(vid))

    def _crops(self, tid: int, batch: dict[str, np.ndarray], i: int, n: int) -> pa.Table:
        fi = batch["frame_index"][i][:n]
        return pa.table(
            {
                "track_id": np.full(n, tid, np.int32),
                "frame_index": fi,
                "time_s": fi / self.cfg.video.fps,
                "crop": pa.array([c.tobytes() for c in batch["crops"][i][:n]], pa.binary()),
            },
            schema=CLIPS,
        )

    @property
    def pending(self) -> list[str]:
        """Videos started but not committed."""
        return list(self.videos)

    def _timeline(self, vid: str, uri: str, state: _Video) -> pa.Table:
        parts = []
        for tid in sorted(state.accs):
            rows = timeline_rows(
                state.accs[tid].per_frame(),
                self.cfg.video.fps,
                self.cfg.infer.output_hz,
                self.cfg.emotion,
            )
            n = len(rows["time_s"])
            parts.append(
                pa.table(
                    {
                        "video_id": [vid] * n,
                        "uri": [uri] * n,
                        "track_id": np.full(n, tid, np.int32),
                        "time_s": rows["time_s"],
                        "frame_index": rows["frame_index"],
                        "arousal": rows["arousal"],
                        "valence": rows["valence"],
                        "emotion": rows["emotion"].astype(str),
                        "box_xyxy": pa.FixedSizeListArray.from_arrays(
                            rows["box_xyxy"].reshape(-1), 4
                        ).cast(BOX),
                        "det_score": rows["det_score"],
                        "interpolated": rows["interpolated"],
                        "model_id": [self.model_id] * n,
                        "untrained": np.full(n, self.untrained),
                    }
                )
            )
        if not parts:
            return TIMELINES.empty_table()
        return conform(pa.concat_tables(parts), TIMELINES)

    def _commit(self, vid: str, state: _Video) -> None:
        end = state.end or {}
        uri = str(end["uri"])
        status = str(end["status"])
        tl_uri = join(self.out, "timelines", f"{vid}.parquet")
        crops_uri = join(self.out, "crops", f"{vid}.parquet")
        if status == OK:
            _table_write(tl_uri, self._timeline(vid, uri, state), self.cfg)
            if state.crops:
                _table_write(crops_uri, pa.concat_tables(state.crops), self.cfg)
        else:
            for stale in (tl_uri, crops_uri):
                _remove(stale, self.cfg)
        row = {
            "video_id": vid,
            "uri": uri,
            "status": status,
            "reason": str(end["reason"]) or None,
            "duration_s": float(end["duration_s"]),
            "fps": float(end["fps"]),
            "frames": int(end["frames"]),
            "tracks": int(end["tracks"]),
            "processing_s": float(end["processing_s"]),
            "model_id": self.model_id,
            "config_hash": self.config_hash,
            "source_etag": str(end["source_etag"]) or None,
            "warnings": str(end["warnings"]) or None,
        }
        _table_write(
            join(self.out, "videos", f"{vid}.parquet"),
            pa.Table.from_pylist([row], VIDEOS),
            self.cfg,
        )
        self.counts[status] += 1
        self.frames += int(end["frames"])
        if self.on_done:
            self.on_done(row)


def read_status(out: str, cfg: VaerrConfig) -> pa.Table:
    """All status rows under OUT/videos/ (empty table if none)."""
    fs, path = filesystem(join(out, "videos"), cfg.storage)
    if not fs.exists(path):
        return VIDEOS.empty_table()
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    tables = []
    for p in files:
        with fs.open(p, "rb") as f:
            tables.append(conform(pq.read_table(f), VIDEOS, fill_missing=("warnings",)))
    return pa.concat_tables(tables) if tables else VIDEOS.empty_table()


def pending_rows(
    manifest: pa.Table, done: pa.Table, model_id: str, cfg_hash: str, force: bool
) -> list[dict[str, Any]]:
    """Manifest rows still to do: not forced-done, and no matching status row."""
    rows = manifest.to_pylist()
    if force:
        return rows
    key = {
        r["video_id"]: (r["source_etag"], r["model_id"], r["config_hash"]) for r in done.to_pylist()
    }
    return [
        r
        for r in rows
        if key.get(r["video_id"]) != (r["source_etag"], model_id, cfg_hash)
        or r["source_etag"] is None
    ]


def _rows_as_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {
        k: np.array([r[k] for r in rows], dtype=object) for k in ("video_id", "uri", "source_etag")
    }


def run_local(
    rows: list[dict[str, Any]],
    cfg: VaerrConfig,
    checkpoint: str,
    writer: TimelineWriter,
    face_stage: FaceStage | None = None,
    model_stage: ModelStage | None = None,
) -> None:
    """The same stages, looped in this process."""
    face = face_stage or FaceStage(cfg)
    model = model_stage or ModelStage(cfg, checkpoint)
    bs = cfg.infer.batch_size
    for row in rows:
        for batch in face(_rows_as_batch([row])):
            n = len(batch["kind"])
            for s in range(0, n, bs):
                writer.consume(model({k: v[s : s + bs] for k, v in batch.items()}))


def run_ray(
    rows: list[dict[str, Any]],
    cfg: VaerrConfig,
    checkpoint: str,
    writer: TimelineWriter,
    address: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> None:
    """The same stages on Ray Data actor pools; starts a local Ray unless one is running or
    `address` names a cluster."""
    started = start_ray(address, ray_init)  # before `import ray`: see pipeline/raysetup.py
    import ray
    from ray.data import ActorPoolStrategy

    try:
        inf = cfg.infer
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{k: r[k] or "" for k in ("video_id", "uri", "source_etag")} for r in rows]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(
            FaceStage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_size=1,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=inf.face_actors),
            num_cpus=inf.face_num_cpus,
            num_gpus=inf.face_num_gpus,
        )
        ds = ds.map_batches(
            ModelStage,
            fn_constructor_kwargs={"cfg": cfg, "checkpoint": checkpoint},
            batch_size=inf.batch_size,
            batch_format="numpy",
            # Starts with one actor so a cluster still scaling up its GPU nodes makes progress.
            compute=ActorPoolStrategy(min_size=1, max_size=inf.model_actors),
            num_cpus=inf.model_num_cpus,
            num_gpus=inf.model_num_gpus,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            writer.consume(batch)
    finally:
        if started:
            ray.shutdown()


def run_inference(
    cfg: VaerrConfig,
    inputs: Iterable[str],
    out: str,
    checkpoint: str,
    *,
    force: bool = False,
    runner: str = "ray",
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The main job. Returns the summary (also written into OUT/run.json)."""
    from pipeline.model.checkpoint import load_checkpoint, resolve_checkpoint
    from pipeline.storage import storage_options

    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat()
    opts = storage_options(cfg.storage, checkpoint)
    ckpt_uri = resolve_checkpoint(checkpoint, cfg.model.registry_file, cfg.cache_dir, opts)
    ckpt = load_checkpoint(ckpt_uri, opts)
    if ckpt.untrained:
        log.warning("checkpoint %s is UNTRAINED: every output is marked untrained", checkpoint)
    budget = cfg.storage.retry_s
    manifest = with_retries(
        lambda: list_inputs(list(inputs), cfg.storage, cfg.infer), budget, "listing inputs"
    )
    chash = config_hash(cfg)
    done = with_retries(lambda: read_status(out, cfg), budget, "reading status rows")
    todo = pending_rows(manifest, done, ckpt.model_id, chash, force)
    skipped = manifest.num_rows - len(todo)
    log.info("%d videos listed, %d to do, %d already done", manifest.num_rows, len(todo), skipped)
    with_retries(
        lambda: write_text(join(out, "config.yaml"), config_yaml(cfg), cfg.storage),
        budget,
        "writing config.yaml",
    )
    # The inputs of this run, so `vaerr verify` can check each has exactly one status row.
    _table_write(join(out, "manifest.parquet"), manifest, cfg)
    writer = TimelineWriter(cfg, out, ckpt.model_id, ckpt.untrained)
    with Progress("infer", len(todo)) as bar:
        writer.on_done = lambda row: bar.video_done(row["frames"], row["uri"], row["status"])
        if todo:
            if runner == "local":
                run_local(todo, cfg, ckpt_uri, writer)
            else:
                run_ray(todo, cfg, ckpt_uri, writer, ray_address, ray_init)
    if writer.pending:
        raise RuntimeError(f"run ended with {len(writer.pending)} videos incomplete")
    wall = time.perf_counter() - t0
    summary = {
        "videos": manifest.num_rows,
        "processed": len(todo),
        "skipped": skipped,
        **writer.counts,
        "frames": writer.frames,
        "frames_per_s": round(writer.frames / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 2),
        "model_id": ckpt.model_id,
        "untrained": ckpt.untrained,
        "output": out,
    }
    run = {
        **summary,
        "started": started,
        "ended": datetime.now(UTC).isoformat(),
        "runner": runner,
        "ray_address": ray_address,
        "config_hash": chash,
        "checkpoint": checkpoint,
        "model": {"arch": ckpt.arch, "version": ckpt.version, "provenance": ckpt.provenance},
        "config": config_dump(cfg),
    }
    text = json.dumps(run, indent=2, default=str)
    with_retries(lambda: write_text(join(out, "run.json"), text, cfg.storage), budget, "run.json")
    return summary
