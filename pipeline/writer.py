"""The sink of `vaerr infer`: model-stage rows -> OUT/timelines/ and OUT/videos/ files.

`TimelineWriter` takes the model stage's batches in any order and commits each video once
its end row and all its windows have arrived: the timeline (tracks blended per frame, resampled
to infer.output_hz) first, then the status row, which commits the video. `InferSink` is the
job skeleton's sink (pipeline/job.py) around it: it starts the writer with the progress bar
and the prior attempts, and sums the run up for the summary and OUT/run.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.outpaths import OutPaths
from pipeline.progress import Progress
from pipeline.record import utc_now
from pipeline.stages import END, WINDOW
from pipeline.status import (
    FAILED,
    NO_FACE,
    OK,
    PENDING,
    VIDEO_FAILURE,
    attempt_outcome,
)
from pipeline.storage import Storage
from pipeline.timeline import TrackAccumulator, timeline_rows, timeline_table
from schemas.config import VaerrConfig, config_hash
from schemas.stage_columns import STATUS_END_COLUMNS, TIMELINE_FRAME_COLUMNS
from schemas.tables import CLIPS, TIMELINES, VIDEOS, conform

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


class InferSink:
    """`vaerr infer`'s sink for the job skeleton: a TimelineWriter started with the progress
    bar and the prior attempts; the summary (counts, frames/s, start-up apart from the steady
    rate) and the completed run record (`running`, the record written at the start, plus the
    summary)."""

    def __init__(
        self,
        cfg: VaerrConfig,
        out: str,
        model_id: str,
        untrained: bool,
        training_data: str | None,
        running: dict[str, Any],
        t0: float,
        store: Storage,
    ) -> None:
        """`t0`: time.perf_counter() when the command began (the wall time's start)."""
        self.cfg, self.out, self.store = cfg, out, store
        self.model_id, self.untrained, self.training_data = model_id, untrained, training_data
        self.running, self.t0 = running, t0
        self.writer: TimelineWriter | None = None

    def start(self, bar: Progress, tried: dict[str, int]) -> None:
        self.writer = TimelineWriter(
            self.cfg, self.out, self.model_id, self.untrained, tried, self.training_data,
            on_done=lambda row: bar.video_done(row["frames"], row["uri"], row["status"]),
            store=self.store,
        )  # fmt: skip

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        assert self.writer is not None, "start() first"
        self.writer.consume(batch)

    def summary(self, rows: list[dict[str, Any]], todo: list[dict[str, Any]]) -> dict[str, Any]:
        writer = self.writer
        if writer is not None and writer.pending:
            raise RuntimeError(f"run ended with {len(writer.pending)} videos incomplete")
        wall = time.perf_counter() - self.t0
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
            "model_id": self.model_id,
            "untrained": self.untrained,
            "training_data": self.training_data,
            "output": self.out,
        }

    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, **self.running, "state": "completed", "ended": utc_now()}
