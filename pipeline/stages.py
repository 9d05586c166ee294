"""The callable stages Ray Data runs (and the local runner loops in-process).

A stage is a small class: `__init__` loads its models once, `__call__` maps a dict of numpy
columns to dicts of numpy columns. No Ray imports here (DESIGN.md principle 1).

Rows flowing between stages are of two kinds: `window` rows (one model window of one track) and
one `end` row per video, carrying its status and the number of windows it produced, so the
writer knows when a video is complete even when windows arrive out of order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.faces.extract import FacePipeline, FaceRun
from pipeline.faces.feed import FaceFeed
from pipeline.scheduling import text
from pipeline.status import FAILED, face_status, failure_kind, failure_reason
from pipeline.storage import Storage
from pipeline.video import decode_warnings
from pipeline.windows import WindowCutter
from schemas.config import VaerrConfig
from schemas.stage_columns import END, FACE_COLUMNS, FRAME_COLUMNS, MODEL_COLUMNS, WINDOW

log = logging.getLogger(__name__)

# Column contracts, derived from the one declaration in schemas/stage_columns.py (shapes per row;
# W = infer.window_frames, S = faces.align.crop_size).
FACE_STAGE_OUTPUT = {c.name: c.describe() for c in FACE_COLUMNS}
MODEL_STAGE_OUTPUT = {c.name: c.describe() for c in MODEL_COLUMNS}

_WINDOW_COLUMNS = tuple(str(c.frames) for c in FRAME_COLUMNS)


@dataclass
class _Cut:
    """One attempt at a video's windows: its face run, the windows already yielded, and the
    last ones not yet yielded (sent with the end row)."""

    run: FaceRun | None = None
    windows: int = 0
    tail: list[dict[str, Any]] = field(default_factory=list)


class _TrackWindows:
    """One video's window rows: face rows in (any number of tracks), each track cut by its
    own WindowCutter; a track's last windows come out once the stream says it ended."""

    def __init__(self, stage: FaceStage, head: dict[str, str]) -> None:
        self.stage, self.head = stage, head
        self.cutters: dict[int, WindowCutter] = {}

    def add(self, rows: dict[str, np.ndarray], ended: list[int]) -> list[dict[str, Any]]:
        """Windows completed by `rows`, then the last ones of the tracks in `ended`."""
        inf, out = self.stage.cfg.infer, []
        for tid in np.unique(rows["track_id"]).tolist():
            sel = rows["track_id"] == tid
            sub = {k: rows[k][sel] for k in _WINDOW_COLUMNS}
            cutter = self.cutters.setdefault(tid, WindowCutter(inf.window_frames, inf.hop_frames))
            out += [self.stage._window(self.head, tid, s, w) for s, w in cutter.add(sub)]
        for tid in ended:
            out += self._last(tid, self.cutters.pop(tid))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The last windows of every track still open."""
        out = []
        for tid, cutter in self.cutters.items():
            out += self._last(tid, cutter)
        self.cutters = {}
        return out

    def _last(self, tid: int, cutter: WindowCutter) -> list[dict[str, Any]]:
        return [self.stage._window(self.head, tid, s, w) for s, w in cutter.finish()]


class FaceStage:
    """Videos -> model windows. Input columns: video_id, uri, source_etag (one row per video;
    any number per batch). Yields batches of about `emit_rows` window rows as tracks grow,
    then each video's end row, so downstream work starts before a video is finished."""

    def __init__(
        self, cfg: VaerrConfig, pipeline: FacePipeline | None = None, emit_rows: int = 4
    ) -> None:
        self.cfg = cfg
        self.store = Storage(cfg.storage)  # retries a video's read on transient faults
        self.pipe = pipeline or FacePipeline(cfg)
        self.emit_rows = emit_rows
        w, s = cfg.infer.window_frames, cfg.faces.align.crop_size
        self.window, self.size = w, s

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        heads = [
            {"video_id": text(v), "uri": text(u), "source_etag": text(e)}
            for v, u, e in zip(batch["video_id"], batch["uri"], batch["source_etag"])
        ]
        if len(heads) > 1:  # infer.face_videos > 1: fed to the device together
            yield from self._together(heads)
            return
        for head in heads:
            yield from self._video(head)

    def _video(self, head: dict[str, str]) -> Iterator[dict[str, np.ndarray]]:
        """One video, retried from the start on a transient storage fault (windows re-sent
        by a retry are counted once by the writer); always ends with its end row."""
        t0 = time.perf_counter()
        uri = head["uri"]
        cut, kind = _Cut(), ""
        try:
            for attempt in self.store.attempts(uri):
                with attempt:
                    cut = _Cut(run=self.pipe.run(uri))
                    yield from self._windows(head, cut)
            status, reason = face_status(cut.run.tracks if cut.run else 0)
        except Exception as exc:
            # by type: environment faults are retried by a rerun, a video's own are final
            status, kind, reason, cut.tail = FAILED, failure_kind(exc), failure_reason(exc, uri), []
        yield self._end(head, cut, status, reason, kind, t0)

    def _together(self, heads: list[dict[str, str]]) -> Iterator[dict[str, np.ndarray]]:
        """Several videos through one FaceFeed (their frames share the detector's batches);
        each yields its windows and its end row as it goes. A video that fails there is run
        again alone (`_video`: its storage retries, its failure status), after the others.
        Each end row's processing_s counts from the group's start: its videos share the device."""
        t0 = time.perf_counter()
        cuts = [_Cut() for _ in heads]
        cutters = [_TrackWindows(self, h) for h in heads]
        out: list[list[dict[str, Any]]] = [[] for _ in heads]
        failed = []
        for ev in FaceFeed(self.pipe, [h["uri"] for h in heads]):
            i, cut = ev.index, cuts[ev.index]
            cut.run = ev.run
            if ev.error is not None:
                log.info("%s: failed beside other videos (%s); run again alone",
                         heads[i]["uri"], type(ev.error).__name__)  # fmt: skip
                failed.append(i)
            elif ev.rows is not None:
                out[i] += cutters[i].add(ev.rows, ev.run.pop_ended())
                if len(out[i]) >= self.emit_rows:
                    cut.windows += len(out[i])
                    yield self._stack(out[i])
                    out[i] = []
            elif ev.done:
                cut.tail = out[i] + cutters[i].finish()
                status, reason = face_status(ev.run.tracks)
                yield self._end(heads[i], cut, status, reason, "", t0)
        for i in failed:
            yield from self._video(heads[i])

    def _end(
        self,
        head: dict[str, str],
        cut: _Cut,
        status: str,
        reason: str | None,
        kind: str,
        t0: float,
    ) -> dict[str, np.ndarray]:
        """The video's last batch: its windows not yet sent, then its end row (status,
        counts, timing since `t0`)."""
        run, tail = cut.run, cut.tail
        windows = cut.windows + len(tail)
        info = run.info if run else None
        frames, tracks = (run.frames, run.tracks) if run else (0, 0)
        end = {
            **head,
            "kind": END,
            "status": status,
            "reason": reason or "",
            "frames": frames,
            "tracks": tracks,
            "windows": windows,
            "duration_s": float(info.duration_s) if info else float("nan"),
            "fps": float(self.cfg.video.fps),
            "processing_s": time.perf_counter() - t0,
            "warnings": decode_warnings(info) or "",
            "failure_kind": kind,
        }
        log.info("%s: %s (%d frames, %d tracks, %d windows) %s",
                 head["uri"], status, frames, tracks, windows, reason or "")  # fmt: skip
        return self._stack(tail + [end])

    def _windows(self, head: dict[str, str], cut: _Cut) -> Iterator[dict[str, np.ndarray]]:
        """Cut the video's tracks into windows; yield full batches as they fill, leave the
        rest in cut.tail and the count yielded in cut.windows."""
        run = cut.run
        assert run is not None
        cutter = _TrackWindows(self, head)
        out: list[dict[str, Any]] = []
        for rows in run:
            out += cutter.add(rows, run.pop_ended())
            if len(out) >= self.emit_rows:
                cut.windows += len(out)
                yield self._stack(out)
                out = []
        cut.tail = out + cutter.finish()

    def _window(
        self, head: dict[str, str], tid: int, start: int, w: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        n = len(w["frame_index"])
        pad = self.window - n

        def padded(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a

        frames = {c.name: padded(w[str(c.frames)]) for c in FRAME_COLUMNS}
        return {**head, "kind": WINDOW, "track_id": tid, "start": start, "n": n, **frames}

    def _stack(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Rows -> one batch of every FACE_COLUMNS column: declared dtypes, arrays stacked,
        strings as object arrays, a column a row lacks filled with its declared default."""
        dims = {"W": self.window, "S": self.size}
        cols: dict[str, np.ndarray] = {}
        for c in FACE_COLUMNS:
            if c.shape:
                zero = np.zeros(c.resolved_shape(dims), c.dtype)
                cols[c.name] = np.stack([r.get(c.name, zero) for r in rows]).astype(
                    c.dtype, copy=False
                )
            else:
                cols[c.name] = np.asarray([r.get(c.name, c.default) for r in rows], c.dtype)
        return cols


class ModelStage:
    """Window rows -> per-frame arousal/valence. Runs the network on the window rows of a
    batch (padded windows masked by `n`), passes end rows through, drops the crops unless
    `infer.store_crops`."""

    def __init__(self, cfg: VaerrConfig, checkpoint: str, model: Any = None) -> None:
        from pipeline.model.checkpoint import load_model

        self.cfg = cfg
        if model is None:
            model, _ = load_model(
                checkpoint,
                cfg.model,
                cache_dir=cfg.cache_dir,
                storage_options=cfg.storage,
            )
        self.model = model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.model.network import predict

        kind = np.asarray(batch["kind"]).astype(str)
        crops = batch["crops"]
        n_rows, w = crops.shape[:2]
        arousal = np.full((n_rows, w), np.nan, np.float32)
        valence = np.full((n_rows, w), np.nan, np.float32)
        sel = np.flatnonzero(kind == WINDOW)
        if len(sel):
            lengths = batch["n"][sel].astype(np.int64)
            t = int(lengths.max())
            res = predict(self.model, crops[sel, :t], lengths, self.cfg.model.dtype)
            arousal[sel, :t] = res["arousal"]
            valence[sel, :t] = res["valence"]
        out = {k: v for k, v in batch.items() if k != "crops" or self.cfg.infer.store_crops}
        out["arousal"] = arousal
        out["valence"] = valence
        return out
