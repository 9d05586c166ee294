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
        for i in range(len(batch["uri"])):
            yield from self._video(
                text(batch["video_id"][i]), text(batch["uri"][i]), text(batch["source_etag"][i])
            )

    def _video(self, vid: str, uri: str, etag: str) -> Iterator[dict[str, np.ndarray]]:
        """One video, retried from the start on a transient storage fault (windows re-sent
        by a retry are counted once by the writer); always ends with its end row."""
        t0 = time.perf_counter()
        head = {"video_id": vid, "uri": uri, "source_etag": etag}
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
        log.info(
            "%s: %s (%d frames, %d tracks, %d windows) %s",
            uri,
            status,
            frames,
            tracks,
            windows,
            reason or "",
        )
        yield self._stack(tail + [end])

    def _windows(self, head: dict[str, str], cut: _Cut) -> Iterator[dict[str, np.ndarray]]:
        """Cut the video's tracks into windows; yield full batches as they fill, leave the
        rest in cut.tail and the count yielded in cut.windows."""
        inf, run = self.cfg.infer, cut.run
        assert run is not None
        out: list[dict[str, Any]] = []
        cutters: dict[int, WindowCutter] = {}
        for rows in run:
            for tid in np.unique(rows["track_id"]).tolist():
                sel = rows["track_id"] == tid
                sub = {k: rows[k][sel] for k in _WINDOW_COLUMNS}
                cutter = cutters.setdefault(tid, WindowCutter(inf.window_frames, inf.hop_frames))
                out += [self._window(head, tid, s, w) for s, w in cutter.add(sub)]
            for tid in run.stream.pop_ended() if run.stream else []:
                out += [self._window(head, tid, s, w) for s, w in cutters.pop(tid).finish()]
            if len(out) >= self.emit_rows:
                cut.windows += len(out)
                yield self._stack(out)
                out = []
        for tid, cutter in cutters.items():
            out += [self._window(head, tid, s, w) for s, w in cutter.finish()]
        cut.tail = out

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
