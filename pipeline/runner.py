"""Run the batch job: manifest -> FaceStage -> ModelStage -> TimelineWriter.

The stages are scheduled by pipeline/scheduling.py's `run_stages` (in-process, or Ray Data
actor pools: the default, laptop or cluster); this module says which stages run and is their
sink (`TimelineWriter`).

Outputs (schemas.tables): OUT/timelines/<video_id>.parquet for ok videos, then
OUT/videos/<video_id>.parquet (the status row: written last, it commits the video), and
OUT/run.json (written as "running" before any video, "completed" at the end). A video is done
when its status row matches (source version, model_id, config_hash) and is final; reruns skip
done videos, `force` recomputes. A failure of the environment (storage, memory, a dead worker)
is not final until `infer.max_attempts` runs have tried the video. One file per video id means a
rerun overwrites rather than duplicates, and a changed checkpoint or config recomputes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.job import ResumableJob
from pipeline.manifest import expand_inputs
from pipeline.outpaths import OutPaths
from pipeline.progress import Progress
from pipeline.record import record_text, utc_now, write_record
from pipeline.scheduling import StageSpec
from pipeline.stages import END, WINDOW, FaceStage, ModelStage
from pipeline.status import (
    FAILED,
    NO_FACE,
    OK,
    PENDING,
    VIDEO_FAILURE,
    attempt_outcome,
)
from pipeline.storage import Storage, StorageUnavailable, is_transient, read_tables, write_text
from pipeline.timeline import TrackAccumulator, timeline_rows, timeline_table
from schemas.config import VaerrConfig, config_dump, config_hash
from schemas.stage_columns import STATUS_END_COLUMNS, TIMELINE_FRAME_COLUMNS
from schemas.tables import CLIPS, SYNTHETIC, TIMELINES, VIDEOS, VIDEOS_ADDED, conform

log = logging.getLogger(__name__)


@dataclass
class _Video:
    accs: dict[int, TrackAccumulator] = field(default_factory=dict)
    crops: list[pa.Table] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)  # (track_id, start) received
    values: int = 0  # arousal and valence values received
    non_finite: int = 0  # of them NaN or infinite (checked raw: blending clips to [-1, 1])
    end: dict[str, Any] | None = None


class TimelineWriter:
    """Consumes model-stage batches in any order; when a video's end row and all its windows
    have arrived, blends its tracks and commits its files.

    Commit is idempotent per video: rows of a video already committed by this writer (a window
    or end row re-delivered by a retried task) are dropped, and a second end row of an open
    video is ignored, so a video is written and counted once. `prior_attempts` maps video_id to
    the runs that already tried it (environment failures with the same source/model/config);
    counts["pending"] holds the environment failures a rerun will retry. `on_done(row)` is
    called with each committed status row (progress)."""

    def __init__(
        self,
        cfg: VaerrConfig,
        out: str,
        model_id: str,
        untrained: bool,
        prior_attempts: dict[str, int] | None = None,
        training_data: str | None = None,
        on_done: Callable[[dict[str, Any]], None] | None = None,
        store: Storage | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store or Storage(cfg.storage)  # the job's; its writes retry outages
        self.paths = OutPaths(out)
        self.model_id = model_id
        self.untrained = untrained
        self.training_data = training_data
        self.config_hash = config_hash(cfg)
        self.prior_attempts = dict(prior_attempts or {})
        self.videos: dict[str, _Video] = {}
        self.committed: set[str] = set()
        self.counts = {OK: 0, NO_FACE: 0, FAILED: 0, PENDING: 0}
        self.frames = 0
        self.on_done = on_done
        self.first_result: float | None = None  # perf_counter of the first batch taken
        self.commits: list[tuple[float, int]] = []  # (perf_counter, frames) per commit

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        """Take one batch of model-stage rows."""
        if self.first_result is None:
            self.first_result = time.perf_counter()
        kinds = np.asarray(batch["kind"]).astype(str)
        for i, kind in enumerate(kinds):
            vid = str(batch["video_id"][i])
            if vid in self.committed:
                continue  # re-delivered after its commit: never re-open the video
            state = self.videos.setdefault(vid, _Video())
            if kind == WINDOW:
                n = int(batch["n"][i])
                tid = int(batch["track_id"][i])
                key = (tid, int(batch["start"][i]))
                if key in state.seen:
                    continue  # a retried task re-sent it (a worker died): count it once
                state.seen.add(key)
                for col in ("arousal", "valence"):
                    part = np.asarray(batch[col][i][:n])
                    state.values += part.size
                    state.non_finite += int(np.count_nonzero(~np.isfinite(part)))
                state.accs.setdefault(tid, TrackAccumulator()).add(
                    batch["frame_index"][i][:n],
                    batch["arousal"][i][:n],
                    batch["valence"][i][:n],
                    {c.name: batch[c.name][i][:n] for c in TIMELINE_FRAME_COLUMNS},
                )
                if "crops" in batch:
                    state.crops.append(self._crops(tid, batch, i, n))
            elif kind == END and state.end is None:  # a duplicate end row counts once
                state.end = {k: batch[k][i] for k in batch if k not in ("crops",)}
            if state.end is not None and len(state.seen) >= int(state.end["windows"]):
                self._commit(vid, self.videos.pop(vid))
                self.committed.add(vid)

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
            parts.append(timeline_table(rows, vid, uri, tid, self.model_id, self.untrained))
        if not parts:
            return TIMELINES.empty_table()
        return conform(pa.concat_tables(parts), TIMELINES)

    def _commit(self, vid: str, state: _Video) -> None:
        end = state.end or {}
        uri = str(end["uri"])
        status, why = str(end["status"]), str(end["reason"]) or None
        tl_uri = self.paths.timeline(vid)
        crops_uri = self.paths.crops(vid)
        bad = non_finite_reason(state.non_finite, state.values, self.cfg.model.dtype)
        if status == OK and bad:
            status, why = FAILED, bad  # never an ok row of NaN "Neutral" faces
        timeline = self._timeline(vid, uri, state) if status == OK else None
        if timeline is not None:
            self.store.write_parquet(tl_uri, timeline)
            if state.crops:
                self.store.write_parquet(crops_uri, pa.concat_tables(state.crops))
        else:
            for stale in (tl_uri, crops_uri):  # an earlier run's results of this video
                self.store.remove(stale)
        kind = (str(end.get("failure_kind") or "") or VIDEO_FAILURE) if status == FAILED else None
        reason, attempts, pending = attempt_outcome(
            status,
            why,
            kind,
            self.prior_attempts.get(vid, 0),
            self.cfg.infer.max_attempts,
        )
        row = {
            **status_fields(end),  # the end row's fields the status row carries
            "status": status,
            "reason": reason,
            "model_id": self.model_id,
            "config_hash": self.config_hash,
            "failure_kind": kind,
            "attempts": attempts,
            "training_data": self.training_data,
        }
        self.store.write_parquet(self.paths.status(vid), pa.Table.from_pylist([row], VIDEOS))
        self.counts[PENDING if pending else status] += 1
        self.frames += int(end["frames"])
        self.commits.append((time.perf_counter(), int(end["frames"])))
        if self.on_done:
            self.on_done(row)


def steady_rate(commits: list[tuple[float, int]]) -> float | None:
    """Frames/s once started: the frames of the videos committed after the first, over the
    time from the first commit to the last (s, frames pairs in any order). None with under 2
    videos, or when they landed within a second of each other (Ray commits in bursts: a rate
    over milliseconds means nothing)."""
    if len(commits) < 2:
        return None
    order = sorted(commits)
    span = order[-1][0] - order[0][0]
    return sum(f for _, f in order[1:]) / span if span >= 1.0 else None


def status_fields(end: dict[str, Any]) -> dict[str, Any]:
    """The end row's columns declared `written` (schemas/stage_columns.py), as the status row's
    Python values: numpy scalars unwrapped, '' (the end row's "none") as null."""
    out = {}
    for c in STATUS_END_COLUMNS:
        v = end[c.name]
        v = v.item() if isinstance(v, np.generic) else v
        out[c.name] = None if isinstance(v, str) and not v else v
    return out


def non_finite_reason(bad: int, total: int, dtype: str) -> str | None:
    """Why a video cannot be `ok`: the network gave `bad` NaN or infinite arousal/valence
    values of `total` (a half-precision overflow, or weights gone bad), which would otherwise
    be rows labelled "Neutral" (NaN) or pinned to +-1 (inf). None when bad is 0. A failure of
    the video with this model and config (final: a rerun gives the same)."""
    if not bad:
        return None
    hint = (
        f"model.dtype={dtype} overflowed? rerun with --set model.dtype=float32 --force"
        if dtype != "float32"
        else "check the checkpoint (vaerr model info)"
    )
    return (
        f"NonFiniteOutput: the model gave {bad} NaN/inf arousal/valence values of {total}: {hint}"
    )


def read_status(out: str, cfg: VaerrConfig) -> pa.Table:
    """All status rows under OUT/videos/ (empty table if none). Files written before a column
    was added read back with nulls there. An unreadable or corrupt file is skipped with a
    warning naming it (its video is then pending, and the rerun rewrites it); a storage outage
    still raises, for the caller's retry, so it never makes every video look pending."""
    return read_tables(OutPaths(out).videos, VIDEOS, cfg.storage, VIDEOS_ADDED, _pending)


def _pending(uri: str, exc: Exception) -> None:
    log.warning("status file %s unreadable (%s): its video counts as pending", uri,
                type(exc).__name__)  # fmt: skip


def stage_specs(cfg: VaerrConfig, checkpoint: str) -> list[StageSpec]:
    """What inference runs: the face stage (one video per call) and the model stage (batches
    of windows; its pool starts with one actor, so a cluster still scaling up its GPU nodes
    makes progress)."""
    inf = cfg.infer
    return [
        StageSpec(
            FaceStage,
            {"cfg": cfg},
            batch_size=1,
            num_cpus=inf.face_num_cpus,
            num_gpus=inf.face_num_gpus,
            pool_size=inf.face_actors,
        ),
        StageSpec(
            ModelStage,
            {"cfg": cfg, "checkpoint": checkpoint},
            batch_size=inf.batch_size,
            num_cpus=inf.model_num_cpus,
            num_gpus=inf.model_num_gpus,
            pool_size=inf.model_actors,
        ),
    ]


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
    glob: bool = True,
) -> dict[str, Any]:
    """The main job. Returns the summary (also written into OUT/run.json, with the INPUTs as
    given and how many videos each listed). `glob=False`: no INPUT is a pattern
    (pipeline/manifest.py)."""
    from pipeline.model import load_checkpoint, resolve_checkpoint

    started = (time.perf_counter(), utc_now())
    # the storage settings, not options made from the checkpoint's name: a name's registry
    # and the file it lists each get their own (a name alone gave none: issue 25)
    ckpt_uri = resolve_checkpoint(checkpoint, cfg.model.registry_file, cfg.cache_dir, cfg.storage)
    ckpt = load_checkpoint(ckpt_uri, cfg.storage)
    if ckpt.untrained:
        log.warning("checkpoint %s is UNTRAINED: every output is marked untrained", checkpoint)
    if ckpt.training_data == SYNTHETIC:
        log.warning("checkpoint %s was trained on SYNTHETIC faces only (a demo model): every "
                    "status row says training_data=synthetic", checkpoint)  # fmt: skip
    job = InferJob(cfg, out, list(inputs), checkpoint, ckpt_uri, ckpt, glob, started)
    return job.run(force, runner, ray_address, ray_init)


class InferJob(ResumableJob):
    """`vaerr infer` on the resumable-job skeleton (pipeline/job.py): the manifest of the
    INPUTs, OUT/videos/ status rows, the face and model stages into a TimelineWriter,
    OUT/run.json (written "running" before any video, "completed" at the end)."""

    command = "infer"

    def __init__(
        self,
        cfg: VaerrConfig,
        out: str,
        inputs: list[str],
        checkpoint: str,
        ckpt_uri: str,
        ckpt: Any,
        glob: bool,
        started: tuple[float, str],
    ) -> None:
        super().__init__(cfg, out, started)
        self.inputs, self.checkpoint, self.ckpt_uri, self.ckpt = inputs, checkpoint, ckpt_uri, ckpt
        self.glob, self.paths = glob, OutPaths(out)
        from pipeline.model import cached_model_id

        # the id hashes every weight: once per version of the file (the weights cache keeps
        # it), not at each job or use
        model_id = cached_model_id(ckpt_uri, ckpt, cfg.storage, cfg.cache_dir)
        self.version = {"model_id": model_id, "config_hash": config_hash(cfg)}
        self.config_uri, self.record_uri = self.paths.config, self.paths.run_record
        self.manifest = pa.table({})
        self.given: list[dict[str, Any]] = []
        self.running: dict[str, Any] = {}
        self.tried: dict[str, int] = {}
        self.writer: TimelineWriter | None = None

    def list_rows(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        self.manifest, self.given = self.store.call(
            lambda: expand_inputs(self.inputs, cfg.storage, cfg.infer, self.glob),
            "listing inputs",
        )
        return self.manifest.to_pylist()

    def read_done(self) -> pa.Table:
        return read_status(self.root, self.cfg)

    def begin(
        self, rows: list[dict[str, Any]], todo: list[dict[str, Any]], tried: dict[str, int]
    ) -> None:
        """run.json says from the start which run is in progress (a killed run stays
        "running"), so `vaerr verify` never takes a half-done rerun for the last completed
        run; then the manifest, so verify can check each input has exactly one status row."""
        ckpt, self.tried = self.ckpt, tried
        self.running = {
            "run_id": uuid.uuid4().hex[:16],
            "state": "running",
            "started": self.started,
            "model_id": self.version["model_id"],
            "config_hash": self.version["config_hash"],
            "checkpoint": self.checkpoint,
            "runner": self.runner,
            "ray_address": self.address,
            "output": self.root,
            "inputs": self.given,  # what `vaerr verify` checks the status rows against
            "model": {"arch": ckpt.arch, "version": ckpt.version, "provenance": ckpt.provenance},
            "training_data": ckpt.training_data,
            "config": config_dump(self.cfg),
        }
        write_record(self.record_uri, self.running, self.store)
        self.store.write_parquet(self.paths.manifest, self.manifest)

    def items(self, todo: list[dict[str, Any]], tried: dict[str, int]) -> list[dict[str, Any]]:
        return [{k: r[k] or "" for k in ("video_id", "uri", "source_etag")} for r in todo]

    def stages(self) -> list[StageSpec]:
        return stage_specs(self.cfg, self.ckpt_uri)

    def sink(self, bar: Progress) -> Callable[[dict[str, np.ndarray]], None]:
        ckpt = self.ckpt
        self.writer = TimelineWriter(
            self.cfg, self.root, self.version["model_id"], ckpt.untrained, self.tried,
            ckpt.training_data,
            on_done=lambda row: bar.video_done(row["frames"], row["uri"], row["status"]),
            store=self.store,
        )  # fmt: skip
        return self.writer.consume

    def end(self) -> None:
        if self.writer is not None and self.writer.pending:
            raise RuntimeError(f"run ended with {len(self.writer.pending)} videos incomplete")

    def failed(self, exc: BaseException) -> None:
        if self.running:
            _mark_failed(self.root, self.running, exc, self.cfg)

    def summary(self, rows: list[dict[str, Any]], todo: list[dict[str, Any]]) -> dict[str, Any]:
        wall, writer, ckpt = time.perf_counter() - self.t0, self.writer, self.ckpt
        counts, frames = (writer.counts, writer.frames) if writer else ({}, 0)
        first = writer.first_result if writer else None
        steady = steady_rate(writer.commits) if writer else None
        return {
            "videos": len(rows),
            "processed": len(todo),
            "skipped": len(rows) - len(todo),
            **counts,
            "frames": frames,
            "frames_per_s": round(frames / wall, 2) if wall > 0 else None,
            "wall_s": round(wall, 2),
            # start-up (checkpoint, models, actors, the first chunk through both stages) apart
            # from the rate once running
            "startup_s": round(first - self.t0, 2) if first is not None else None,
            "steady_frames_per_s": None if steady is None else round(steady, 2),
            "model_id": self.version["model_id"],
            "untrained": ckpt.untrained,
            "training_data": ckpt.training_data,
            "output": self.root,
        }

    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, **self.running, "state": "completed", "ended": utc_now()}


def _mark_failed(out: str, record: dict[str, Any], exc: BaseException, cfg: VaerrConfig) -> None:
    """run.json says the run failed: best effort, and not when storage is what failed (the
    client alone would spend ~45 s on it): run.json then keeps saying "running", which verify
    reports too."""
    record.update(state="failed", ended=utc_now(), error=type(exc).__name__)
    if isinstance(exc, StorageUnavailable) or is_transient(exc):
        return
    try:
        write_text(OutPaths(out).run_record, record_text(record), cfg.storage)
    except Exception:
        log.warning("could not mark run.json failed; it still says running")
