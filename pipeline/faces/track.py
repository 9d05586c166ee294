"""Online linking of per-frame detections into face tracks with stable ids.

Cost of linking a detection to an open track: IoU with the track's last box, minus
`landmark_weight` x the mean landmark distance normalised by the box diagonal; pairs under the
IoU threshold never link; assignment is optimal per frame (Hungarian). A track that misses more
than `max_gap` frames is closed. All faces are kept, not just the largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.faces.align import box_iou
from schemas.config import TrackConfig


@dataclass
class Track:
    """Detections of one face. Arrays grow per detection; `frames` is sorted."""

    track_id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    closed: bool = False

    @property
    def first(self) -> int:
        """First frame with a detection."""
        return self.frames[0]

    @property
    def last(self) -> int:
        """Last frame with a detection so far."""
        return self.frames[-1]

    def add(self, frame: int, box: np.ndarray, score: float, lms: np.ndarray) -> None:
        """Append one detection (frames must increase)."""
        self.frames.append(frame)
        self.boxes.append(box)
        self.scores.append(score)
        self.landmarks.append(lms)

    def drop_before(self, frame: int) -> None:
        """Forget detections before `frame` (keeps memory bounded on long videos)."""
        k = int(np.searchsorted(self.frames, frame, side="left"))
        if k > 0:
            del self.frames[:k], self.boxes[:k], self.scores[:k], self.landmarks[:k]


def link_cost(
    track_boxes: np.ndarray,
    track_lms: np.ndarray,
    boxes: np.ndarray,
    lms: np.ndarray,
    cfg: TrackConfig,
) -> np.ndarray:
    """Cost [T, D] of linking open tracks to detections; np.inf where IoU < threshold."""
    iou = box_iou(track_boxes, boxes)
    diag = np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=1)[None, :]
    dist = np.linalg.norm(track_lms[:, None] - lms[None, :], axis=-1).mean(-1)
    cost = -(iou - cfg.landmark_weight * dist / np.maximum(diag, 1e-6))
    return np.where(iou >= cfg.iou_threshold, cost, np.inf)


class Tracker:
    """Assigns track ids frame by frame. `update` returns the ids given to the detections and
    `close_stale` the tracks that can no longer grow."""

    def __init__(self, cfg: TrackConfig) -> None:
        self.cfg = cfg
        self.open: dict[int, Track] = {}
        self.next_id = 0

    def update(
        self, frame: int, boxes: np.ndarray, scores: np.ndarray, lms: np.ndarray
    ) -> np.ndarray:
        """Link one frame's detections (boxes [D, 4], scores [D], lms [D, K, 2]) -> ids [D]."""
        ids = np.full(len(boxes), -1, np.int64)
        tracks = [t for t in self.open.values() if frame - t.last <= self.cfg.max_gap + 1]
        if tracks and len(boxes):
            tb = np.stack([t.boxes[-1] for t in tracks])
            tl = np.stack([t.landmarks[-1] for t in tracks])
            cost = link_cost(tb, tl, boxes, lms, self.cfg)
            finite = np.where(np.isfinite(cost), cost, 1e9)
            rows, cols = linear_sum_assignment(finite)
            for r, c in zip(rows, cols):
                if np.isfinite(cost[r, c]):
                    ids[c] = tracks[r].track_id
        for d in range(len(boxes)):
            if ids[d] < 0:
                ids[d] = self.next_id
                self.open[self.next_id] = Track(self.next_id)
                self.next_id += 1
            self.open[int(ids[d])].add(frame, boxes[d], float(scores[d]), lms[d])
        return ids

    def close_stale(self, frame: int) -> list[Track]:
        """Close and return tracks whose last detection is more than max_gap frames before
        `frame` (the newest frame processed)."""
        stale = [t for t in self.open.values() if frame - t.last > self.cfg.max_gap]
        for t in stale:
            t.closed = True
            del self.open[t.track_id]
        return stale

    def close_all(self) -> list[Track]:
        """End of video: close every open track."""
        rest = list(self.open.values())
        for t in rest:
            t.closed = True
        self.open.clear()
        return rest
