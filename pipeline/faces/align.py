"""Pure geometry: gap interpolation, landmark smoothing, the alignment template and crop square,
box IoU. The similarity fits and crops themselves run batched on the device (warp.py).

No models here; every function maps numpy arrays to numpy arrays. Coordinates are (x, y) in
pixels. The template frame is the mean face's 256x256 frame (auto_avsr's 20words_mean_face).
"""

from __future__ import annotations

import numpy as np

from pipeline.faces.detection import FIVE_POINTS, PointLayout


def template_points(
    mean_face: np.ndarray,
    kind: str,
    stable: tuple[int, ...],
    points: PointLayout = FIVE_POINTS,
) -> np.ndarray:
    """Template points [P, 2] the stable landmarks are fitted to.

    fan68: mean_face[stable]. retina5 (the detector's own points): the detector's declared
    point layout on the mean face, in its order (RetinaFace: eye centres, the means of 36-41
    and 42-47, nose tip 30 and mouth corners 48, 54).
    """
    if kind == "fan68":
        return mean_face[list(stable)].astype(np.float64)
    if kind == "retina5":
        return points.template(mean_face)
    raise ValueError(f"unknown landmark kind {kind!r}")


def stable_subset(landmarks: np.ndarray, kind: str, stable: tuple[int, ...]) -> np.ndarray:
    """The points of `landmarks` [..., K, 2] that match `template_points` [..., P, 2]."""
    return landmarks[..., list(stable), :] if kind == "fan68" else landmarks


def crop_square(mean_face: np.ndarray, scale: float) -> tuple[float, float, float]:
    """(x0, y0, side) in the template frame: the bounding box of all 68 mean-face points, made
    square about its centre and enlarged by `scale`. One square for every landmark kind."""
    lo, hi = mean_face.min(0), mean_face.max(0)
    centre = (lo + hi) / 2.0
    side = float((hi - lo).max() * scale)
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def interpolate_at(known: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Linear interpolation of values [D, ...] known at sorted frames known [D] to frames
    query [Q]; queries outside the known range take the nearest value (pad). -> [Q, ...]."""
    known = np.asarray(known)
    query = np.asarray(query)
    flat = values.reshape(len(known), -1).astype(np.float64)
    if len(known) == 1:
        return np.repeat(values[:1], len(query), 0).astype(np.float64)
    hi = np.clip(np.searchsorted(known, query, side="left"), 1, len(known) - 1)
    lo = hi - 1
    span = (known[hi] - known[lo]).astype(np.float64)
    w = np.clip((query - known[lo]) / np.where(span > 0, span, 1.0), 0.0, 1.0)[:, None]
    out = flat[lo] * (1.0 - w) + flat[hi] * w
    return out.reshape((len(query),) + values.shape[1:])


def centred_average(
    frames: np.ndarray, values: np.ndarray, query: np.ndarray, half: int, first: int, last: float
) -> np.ndarray:
    """Centred moving average of a track's per-frame values.

    frames [T] are consecutive frame indices with values [T, ...] (already interpolated); for
    each query frame f the mean over [f - h, f + h] with h = min(half, f - first, last - f):
    the window shrinks at the track ends so it stays centred (auto_avsr's rule). `last` is the
    track's last frame (inf while the track is still open). -> [Q, ...].
    """
    flat = values.reshape(len(frames), -1).astype(np.float64)
    csum = np.vstack([np.zeros((1, flat.shape[1])), np.cumsum(flat, 0)])
    h = np.minimum(np.minimum(half, query - first), last - query).astype(np.int64)
    h = np.maximum(h, 0)
    start = query - h - frames[0]
    stop = query + h - frames[0] + 1
    if start.min(initial=0) < 0 or stop.max(initial=0) > len(frames):
        raise ValueError("smoothing window reaches outside the frames given")
    out = (csum[stop] - csum[start]) / (2 * h + 1)[:, None]
    return out.reshape((len(query),) + values.shape[1:])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of xyxy boxes a [N, 4] and b [M, 4]."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
