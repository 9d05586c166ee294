"""The face stage's engine: frames in, finalised per-(track, frame) rows with aligned crops out.

Single pass with bounded look-ahead. Gray frames are buffered only until every track that may
still use them has finalised them. A track's frame f is final once (a) the track is confirmed
(spans >= min_length frames) or closed, and (b) its detections reach f + half the smoothing
window (or the track is closed), so interpolation and smoothing around f can no longer change.
Memory is therefore bounded by max_gap + smoothing + min_length frames, not by video length.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from pipeline.faces.align import (
    centred_average,
    crop_matrix,
    crop_square,
    interpolate_at,
    similarity_transform,
    stable_subset,
    template_points,
    warp_crop,
)
from pipeline.faces.detect import Detections
from pipeline.faces.track import Track, Tracker
from pipeline.video import FrameChunk
from schemas.config import FaceConfig

# Columns of every batch FaceStream emits (see `empty_rows`).
FACE_COLUMNS = (
    "track_id",
    "frame_index",
    "time_s",
    "box_xyxy",
    "det_score",
    "landmarks",
    "interpolated",
    "crop",
)


def empty_rows(points: int, size: int) -> dict[str, np.ndarray]:
    """A zero-row batch with the right dtypes and trailing shapes."""
    return {
        "track_id": np.zeros(0, np.int32),
        "frame_index": np.zeros(0, np.int32),
        "time_s": np.zeros(0, np.float64),
        "box_xyxy": np.zeros((0, 4), np.float32),
        "det_score": np.zeros(0, np.float32),
        "landmarks": np.zeros((0, points, 2), np.float32),
        "interpolated": np.zeros(0, bool),
        "crop": np.zeros((0, size, size), np.uint8),
    }


def concat_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column batches (same keys)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class FaceStream:
    """Detect -> landmarks -> track -> align, chunk by chunk.

    detector: frames [N, H, W, 3] -> list of Detections; landmarker: `.batch(frames, boxes,
    points5)` -> list of [M, K, 2]; mean_face: [68, 2] template. Call `push` per chunk and
    `finish` at the end; each returns the rows finalised so far (columns of FACE_COLUMNS).
    """

    def __init__(
        self, cfg: FaceConfig, fps: float, detector: Any, landmarker: Any, mean_face: np.ndarray
    ) -> None:
        self.cfg = cfg
        self.fps = fps
        self.detector = detector
        self.landmarker = landmarker
        a = cfg.align
        self.kind = landmarker.kind
        self.template = template_points(mean_face, self.kind, a.stable_points)
        self.square = crop_square(mean_face, a.crop_scale)
        self.half = a.smooth_window // 2
        self.tracker = Tracker(cfg.track)
        self.closed: list[Track] = []
        self.next_final: dict[int, int] = {}  # tracker id -> next frame to finalise
        self.out_id: dict[int, int] = {}  # tracker id -> public track id (confirmation order)
        self.gray: dict[int, np.ndarray] = {}
        self.last_frame = -1
        self.max_buffered = 0
        self.ended: list[int] = []  # public ids of tracks fully emitted (see pop_ended)
        self.frames_seen = 0
        self.finished = False

    @property
    def tracks_emitted(self) -> int:
        """Number of public tracks so far."""
        return len(self.out_id)

    def push(self, chunk: FrameChunk) -> dict[str, np.ndarray]:
        """Process one chunk of analysis frames; return newly final rows."""
        frames, idx = chunk.frames, chunk.frame_index
        self.frames_seen += len(idx)
        every = self.cfg.detector.every_k
        sel = np.flatnonzero(idx % every == 0)
        dets: list[Detections] = self.detector(frames[sel]) if len(sel) else []
        lms = self.landmarker.batch(
            [frames[i] for i in sel], [d.boxes for d in dets], [d.landmarks for d in dets]
        )
        by_frame = {int(i): (d, lm) for i, d, lm in zip(sel, dets, lms)}
        for i, f in enumerate(idx.tolist()):
            self.gray[f] = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
            if i in by_frame:
                d, lm = by_frame[i]
                if len(d.boxes):
                    self.tracker.update(f, d.boxes, d.scores, lm)
            self.closed += self.tracker.close_stale(f)
            self.last_frame = f
        self.max_buffered = max(self.max_buffered, len(self.gray))
        return self._finalise()

    def pop_ended(self) -> list[int]:
        """Public ids of tracks whose last row has been returned since the previous call."""
        out, self.ended = self.ended, []
        return out

    def finish(self) -> dict[str, np.ndarray]:
        """End of video: close all tracks and return the remaining rows."""
        self.closed += self.tracker.close_all()
        self.finished = True
        rows = self._finalise()
        self.gray.clear()
        return rows

    def _ready_until(self, t: Track) -> int:
        min_length = self.cfg.track.min_length
        if self.finished:  # a video shorter than min_length keeps its faces
            min_length = min(min_length, self.frames_seen)
        confirmed = t.last - t.first + 1 >= min_length
        if t.closed:
            return t.last if confirmed else t.first - 1
        return t.last - self.half if confirmed else t.first - 1

    def _finalise(self) -> dict[str, np.ndarray]:
        parts = []
        live = list(self.tracker.open.values()) + self.closed
        for t in sorted(live, key=lambda t: (t.first, t.track_id)):
            start = self.next_final.get(t.track_id, t.first)
            stop = self._ready_until(t)
            if stop >= start:
                if t.track_id not in self.out_id:
                    self.out_id[t.track_id] = len(self.out_id)
                parts.append(self._rows(t, np.arange(start, stop + 1)))
                self.next_final[t.track_id] = stop + 1
                lower = stop + 1 - self.half
                k = int(np.searchsorted(t.frames, lower, side="right")) - 1
                if k > 0:
                    t.drop_before(t.frames[k])
        done = [
            t
            for t in self.closed
            if self.next_final.get(t.track_id, t.first) > self._ready_until(t)
        ]
        self.ended += [self.out_id[t.track_id] for t in done if t.track_id in self.out_id]
        done_ids = {t.track_id for t in done}
        self.closed = [t for t in self.closed if t.track_id not in done_ids]
        needed = [
            self.next_final.get(t.track_id, t.first)
            for t in list(self.tracker.open.values()) + self.closed
        ]
        keep_from = min(needed, default=self.last_frame + 1)
        for f in [f for f in self.gray if f < keep_from]:
            del self.gray[f]
        if not parts:
            return empty_rows(self.landmarker.points, self.cfg.align.crop_size)
        return concat_rows(parts)

    def _rows(self, t: Track, fr: np.ndarray) -> dict[str, np.ndarray]:
        known = np.asarray(t.frames)
        lms = np.stack(t.landmarks)
        end = t.last if t.closed else math.inf
        lo = max(t.first, int(fr[0]) - self.half)
        hi = int(min(fr[-1] + self.half, t.last))
        span = np.arange(lo, hi + 1)
        raw = interpolate_at(known, lms, span)
        smooth = centred_average(span, raw, fr, self.half, t.first, end)
        pos = np.searchsorted(known, fr)
        is_det = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == fr)
        scores = np.where(is_det, np.asarray(t.scores)[np.minimum(pos, len(known) - 1)], 0.0)
        size = self.cfg.align.crop_size
        crops = np.empty((len(fr), size, size), np.uint8)
        for i, f in enumerate(fr.tolist()):
            src = stable_subset(smooth[i], self.kind, self.cfg.align.stable_points)
            m = crop_matrix(similarity_transform(src, self.template), self.square, size)
            crops[i] = warp_crop(self.gray[f], m, size)
        return {
            "track_id": np.full(len(fr), self.out_id[t.track_id], np.int32),
            "frame_index": fr.astype(np.int32),
            "time_s": fr / self.fps,
            "box_xyxy": interpolate_at(known, np.stack(t.boxes), fr).astype(np.float32),
            "det_score": scores.astype(np.float32),
            "landmarks": raw[fr - lo].astype(np.float32),
            "interpolated": ~is_det,
            "crop": crops,
        }
