"""The face stage's engine: frames in, finalised per-(track, frame) rows with aligned crops out.

Single pass with bounded look-ahead. Gray frames are buffered only until every track that may
still use them has finalised them. A track's frame f is final once (a) the track is confirmed
(spans >= min_length frames) or closed, and (b) its detections reach f + half the smoothing
window (or the track is closed), so interpolation and smoothing around f can no longer change.
Memory is therefore bounded by max_gap + smoothing + min_length frames, not by video length.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from pipeline.faces.align import (
    box_iou,
    centred_average,
    crop_square,
    interpolate_at,
    stable_subset,
    template_points,
)
from pipeline.faces.colour import planes_to_device, rgb_to_gray
from pipeline.faces.detect import Detections, frames_tensor
from pipeline.faces.landmarks import LandmarkJob
from pipeline.faces.track import Track, Tracker
from pipeline.faces.warp import compose, similarity_batch, warp_batch
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


class Staged(NamedTuple):
    """One chunk on the device, between `FaceStream.stage` and `FaceStream.complete`:
    frame_index [N] (analysis frames), sel [S] (positions detected on), rgb uint8
    [S, H, W, 3] and gray uint8 [N, H, W] on the device."""

    frame_index: np.ndarray
    sel: np.ndarray
    rgb: torch.Tensor
    gray: torch.Tensor

    @property
    def detect_frames(self) -> np.ndarray:
        """Analysis frame indices of the frames detected on [S]."""
        return self.frame_index[self.sel]


def concat_rows(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column batches (same keys)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class FaceStream:
    """Detect -> landmarks -> track -> align, chunk by chunk.

    detector: frames uint8 RGB [N, H, W, 3] (a tensor on `device`) -> list of Detections;
    landmarker: `.batch(frames, boxes, points5)` -> list of [M, K, 2]; mean_face: [68, 2]
    template. Call `push` per chunk and `finish` at the end; each returns the rows finalised
    so far (columns of FACE_COLUMNS).

    Frames live on `device` (default: the detector's): a chunk's planes (or RGB) cross to it
    once as uint8, are converted there, and the buffered gray frames the crops are cut from
    stay there; only detections, landmarks and the uint8 crops come back to the host.
    `timer` (a pipeline.faces.timing.StageTimer) splits the time per step when set.
    """

    def __init__(
        self,
        cfg: FaceConfig,
        fps: float,
        detector: Any,
        landmarker: Any,
        mean_face: np.ndarray,
        device: str | None = None,
        timer: Any = None,
    ) -> None:
        self.cfg = cfg
        self.fps = fps
        self.detector = detector
        self.landmarker = landmarker
        self.device = torch.device(device or detector.device)
        self.timer = timer
        a = cfg.align
        self.kind = landmarker.kind
        self.template = template_points(mean_face, self.kind, a.stable_points, detector.points)
        self.square = crop_square(mean_face, a.crop_scale)
        x0, y0, side = self.square
        k = a.crop_size / side
        # template square -> [0, crop_size) crop, composed after each similarity fit
        self._to_crop = torch.tensor(
            [[k, 0.0, -x0 * k], [0.0, k, -y0 * k]], dtype=torch.float64, device=self.device
        )
        self._template_t = torch.from_numpy(self.template).to(self.device)
        self.half = a.smooth_window // 2
        self.tracker = Tracker(cfg.track)
        self.closed: list[Track] = []
        self.next_final: dict[int, int] = {}  # tracker id -> next frame to finalise
        self.out_id: dict[int, int] = {}  # tracker id -> public track id (confirmation order)
        self.gray: dict[int, torch.Tensor] = {}  # frame -> uint8 [H, W] on the device
        self.last_frame = -1
        self.max_buffered = 0
        self.ended: list[int] = []  # public ids of tracks fully emitted (see pop_ended)
        self.frames_seen = 0
        self.finished = False

    @property
    def tracks_emitted(self) -> int:
        """Number of public tracks so far."""
        return len(self.out_id)

    def _mark(self, step: str, sync: bool = True) -> None:
        if self.timer is not None:
            self.timer.mark(step, self.device if sync else None)

    def _to_device(self, chunk: FrameChunk, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(RGB uint8 [len(sel), H, W, 3] of the frames to detect on, gray uint8 [N, H, W] of
        all frames), both on the device."""
        if chunk.planes is not None:
            return planes_to_device(chunk.planes, self.device, select=sel)
        frames = frames_tensor(chunk.frames, self.device)
        return frames[torch.from_numpy(sel).to(self.device)], rgb_to_gray(frames)

    @torch.inference_mode()
    def push(self, chunk: FrameChunk) -> dict[str, np.ndarray]:
        """Process one chunk of analysis frames; return newly final rows."""
        staged = self.stage(chunk)
        return self.complete(staged, self.detect(staged.rgb, staged.detect_frames))

    @property
    def batchable(self) -> bool:
        """Whether this stream's detections are whole-frame passes that may share a detector
        call with other streams' frames (pipeline/faces/feed.py); ROI search depends on this
        stream's tracks, so it stays per stream."""
        return self.cfg.detector.roi.keyframe_every == 1 or not self.detector.roi_search

    @torch.inference_mode()
    def stage(self, chunk: FrameChunk) -> Staged:
        """First half of `push`: the chunk's frames on the device and which to detect on."""
        idx = chunk.frame_index
        self.frames_seen += len(idx)
        sel = np.flatnonzero(idx % self.cfg.detector.every_k == 0)
        rgb, gray = self._to_device(chunk, sel)
        self._mark("convert")
        return Staged(idx, sel, rgb, gray)

    @staticmethod
    def landmark_job(staged: Staged, dets: list[Detections]) -> LandmarkJob:
        """What the landmarker needs for a staged chunk's detections (its `batch` arguments)."""
        return staged.rgb, [d.boxes for d in dets], [d.landmarks for d in dets]

    @torch.inference_mode()
    def complete(
        self, staged: Staged, dets: list[Detections], lms: list[np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Second half of `push`, given the detections of `staged.rgb` (one per frame, from
        `detect` or from a detector call shared with other videos) and optionally their
        landmarks (per frame [M, K, 2], from a landmarker call shared with other videos):
        landmarks, tracking and the rows that became final."""
        idx, sel, rgb, gray = staged
        if lms is None:
            lms = self.landmarker.batch(*self.landmark_job(staged, dets))
        self._mark("fan")
        by_frame = {int(i): (d, lm) for i, d, lm in zip(sel, dets, lms)}
        for i, f in enumerate(idx.tolist()):
            self.gray[f] = gray[i]
            if i in by_frame:
                d, lm = by_frame[i]
                if len(d.boxes):
                    self.tracker.update(f, d.boxes, d.scores, lm)
            self.closed += self.tracker.close_stale(f)
            self.last_frame = f
        self.max_buffered = max(self.max_buffered, len(self.gray))
        self._mark("track", sync=False)
        rows = self._finalise()
        self._mark("align")
        return rows

    def detect(self, rgb: torch.Tensor, frames: np.ndarray) -> list[Detections]:
        """Detections for the frames to detect on (rgb [S, H, W, 3] on the device, analysis
        frame indices frames [S]). Keyframes (every `keyframe_every`-th detected frame) are
        detected whole; with `roi.keyframe_every` > 1 the others only in windows around the
        live tracks (see `anchor_boxes`)."""
        if len(frames) == 0:
            return []
        det = self.cfg.detector
        period = det.every_k * det.roi.keyframe_every
        if det.roi.keyframe_every == 1 or not self.detector.roi_search:
            return self.detector(rgb)
        key = np.flatnonzero(frames % period == 0)
        rest = np.flatnonzero(frames % period != 0)
        dev = rgb.device
        out: list[Detections] = [Detections.empty() for _ in frames]
        if len(key):
            for k, d in zip(key.tolist(), self.detector(rgb[torch.from_numpy(key).to(dev)])):
                out[k] = d
        if len(rest):
            anchors = self.anchor_boxes(frames, key, out, rest)
            found = self.detector.detect_rois(rgb[torch.from_numpy(rest).to(dev)], anchors)
            for k, d in zip(rest.tolist(), found):
                out[k] = d
        return out

    def anchor_boxes(
        self, frames: np.ndarray, key: np.ndarray, key_dets: list[Detections], rest: np.ndarray
    ) -> list[np.ndarray]:
        """Where to look for the tracked faces in the non-keyframes `rest` (positions in
        `frames`, analysis indices of this chunk's detected frames): for each, boxes [M, 4]
        source px. The faces of the latest keyframe of this chunk before it, plus the last box
        of every track that was open at the chunk's start, can still link (gap <= max_gap)
        and that keyframe did not find again (IoU < the tracker's threshold). All windows of a
        chunk come from state known before its non-keyframes are detected, so they go through
        the network in one batch; `roi.enlarge` is the margin for motion since then."""
        track = self.cfg.track
        open_tracks = list(self.tracker.open.values())
        last = np.array([t.last for t in open_tracks], np.int64)
        tboxes = np.array([t.boxes[-1] for t in open_tracks], np.float32).reshape(-1, 4)
        out = []
        for pos in rest.tolist():
            f = int(frames[pos])
            prior = key[key < pos]
            base = tboxes[f - last <= track.max_gap + 1]
            if len(prior) == 0:
                out.append(base)
                continue
            kb = key_dets[int(prior[-1])].boxes
            if len(kb) and len(base):
                base = base[box_iou(base, kb).max(1) < track.iou_threshold]
            out.append(np.concatenate([kb, base]).astype(np.float32))
        return out

    def pop_ended(self) -> list[int]:
        """Public ids of tracks whose last row has been returned since the previous call."""
        out, self.ended = self.ended, []
        return out

    @torch.inference_mode()
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
        if not parts:
            self._drop_gray(needed)
            return empty_rows(self.landmarker.points, self.cfg.align.crop_size)
        rows = concat_rows(parts)
        rows["crop"] = self._crops(rows.pop("fit_points"), rows["frame_index"])
        self._drop_gray(needed)
        return rows

    def _drop_gray(self, needed: list[int]) -> None:
        keep_from = min(needed, default=self.last_frame + 1)
        for f in [f for f in self.gray if f < keep_from]:
            del self.gray[f]

    def _crops(self, fit_points: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """All rows' crops at once on the device: similarity fits of fit_points [R, P, 2] to
        the template, then one batched warp of the buffered gray frames -> uint8 [R, S, S]."""
        size = self.cfg.align.crop_size
        uniq, owner = np.unique(frames, return_inverse=True)
        images = torch.stack([self.gray[int(f)] for f in uniq])
        src = torch.from_numpy(np.ascontiguousarray(fit_points)).to(self.device)
        m = compose(self._to_crop, similarity_batch(src, self._template_t))
        owner_t = torch.from_numpy(owner.reshape(-1).astype(np.int64)).to(self.device)
        return warp_batch(images, owner_t, m, size).cpu().numpy()

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
        fit = stable_subset(smooth, self.kind, self.cfg.align.stable_points)
        return {
            "track_id": np.full(len(fr), self.out_id[t.track_id], np.int32),
            "frame_index": fr.astype(np.int32),
            "time_s": fr / self.fps,
            "box_xyxy": interpolate_at(known, np.stack(t.boxes), fr).astype(np.float32),
            "det_score": scores.astype(np.float32),
            "landmarks": raw[fr - lo].astype(np.float32),
            "interpolated": ~is_det,
            "fit_points": np.asarray(fit, np.float64),  # replaced by "crop" in _finalise
        }
