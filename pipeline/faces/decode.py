"""RetinaFace's outputs -> faces: box and 5-point decoding against the anchors, NMS per frame,
the min-size filter and `max_faces`, for a batch of frames.

`decode_batch` keeps the device busy: fixed shapes throughout (each frame's strongest
candidates, a dense greedy NMS), nothing read back by the host inside the batch, one packed
copy at the end. `decode_exact` is the same decoding with host round trips, for the rare
batch the fixed shapes cannot hold (and the reference the fast path is tested against).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torchvision.ops import batched_nms

from pipeline.device import HostCopy
from pipeline.faces.detection import Detections
from schemas.config import DetectorConfig

log = logging.getLogger(__name__)

# RetinaFace's box-coding variances (Deng et al. 2020).
VARIANCE = (0.1, 0.2)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[..., 4] regression + [..., 4] priors -> [..., 4] normalised xyxy."""
    centre = priors[..., :2] + loc[..., :2] * VARIANCE[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCE[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[..., 10] regression + [..., 4] priors -> [..., 5, 2] normalised points."""
    pts = pre.reshape(*pre.shape[:-1], 5, 2)
    return priors[..., None, :2] + pts * VARIANCE[0] * priors[..., None, 2:]


class NetOutputs(NamedTuple):
    """RetinaFace's outputs for N frames of one input size, with what maps them to source px:
    loc [N, A, 4], conf [N, A, 2], landm [N, A, 10] (float32, any device), priors [A, 4]
    (the anchors of that size), size = (W, H) / scale, float32 [2]."""

    loc: torch.Tensor
    conf: torch.Tensor
    landm: torch.Tensor
    priors: torch.Tensor
    size: torch.Tensor


# Candidates over the threshold a frame keeps on a GPU, strongest first: a face gives about 30
# at the default threshold, so 256 hold 8 faces' worth before NMS. A frame with more (a crowd)
# sends its batch down the exact path instead (decode_exact: host round trips).
DEVICE_TOP_K = 256


def candidate_cap(out: NetOutputs, cfg: DetectorConfig) -> int:
    """How many candidates a frame keeps (K of decode_device): DEVICE_TOP_K on an accelerator,
    where reading the batch's counts would make the device wait; on a CPU, where that read
    costs nothing, the batch's largest count over the threshold rounded up to 16 (the dense
    NMS grows with K squared: 2.1 ms a frame at 256 on one core, against 0.1-0.3 for the
    exact path). The same decoding either way; only K differs."""
    if not fits_on_host(out.conf.device):
        return DEVICE_TOP_K
    most = int((out.conf[..., 1] > cfg.threshold).sum(1).max()) if len(out.conf) else 0
    return max(16, -(-most // 16) * 16)


def fits_on_host(device: torch.device) -> bool:
    """Whether K is fitted to the batch on this device (reads are free on a CPU)."""
    return device.type == "cpu"


# Cluster-NMS rounds before its convergence is checked; a batch whose suppression chains are
# longer (never seen on the assets: chains of 2-3) takes the exact path too.
NMS_ROUNDS = 4


def box_iou_dense(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU within each frame: xyxy [N, K, 4] -> [N, K, K], float32, computed as
    torchvision's NMS kernels do (area without +1, inter / (a + b - inter))."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = torch.minimum(x2[:, :, None], x2[:, None]) - torch.maximum(x1[:, :, None], x1[:, None])
    h = torch.minimum(y2[:, :, None], y2[:, None]) - torch.maximum(y1[:, :, None], y1[:, None])
    inter = w.clamp_min(0) * h.clamp_min(0)
    return inter / (area[:, :, None] + area[:, None] - inter)


def greedy_nms_dense(
    boxes: torch.Tensor, valid: torch.Tensor, iou: float, rounds: int = NMS_ROUNDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS of every frame at once, without a host round trip: boxes xyxy [N, K, 4]
    sorted by decreasing score, valid bool [N, K] -> (keep bool [N, K], converged bool [N]).

    Cluster-NMS (Zheng et al. 2020): a box is kept when no kept box above it overlaps it by
    more than `iou`; iterating that rule from "all kept" reaches exactly greedy NMS's set
    once it stops changing. `rounds` iterations run, then one more tells whether they had
    converged in each frame (read by the caller with the detections, not here)."""
    k = boxes.shape[1]
    above = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(1)  # row i above j
    over = (box_iou_dense(boxes) > iou) & above & valid[:, :, None]
    keep = valid
    for _ in range(rounds):
        keep = valid & ~(over & keep[:, :, None]).any(1)
    again = valid & ~(over & keep[:, :, None]).any(1)
    return keep, (again == keep).all(1)


def decode_batch(out: NetOutputs, cfg: DetectorConfig) -> list[Detections]:
    """The network's outputs for N frames (NetOutputs) -> N Detections in source px:
    `launch_decode(out, cfg).result()`."""
    return launch_decode(out, cfg).result()


class PendingDecode:
    """One batch's decoding, queued on its device (`launch_decode`); `result()` reads it."""

    def __init__(self, out: NetOutputs, cfg: DetectorConfig) -> None:
        self.out, self.cfg = out, cfg
        k = candidate_cap(out, cfg)
        self.m = min(cfg.max_faces, out.loc.shape[1], k)
        self.packed = HostCopy(decode_device(out, cfg, k))
        self._result: list[Detections] | None = None

    def result(self) -> list[Detections]:
        """The N Detections (waits for the device here, the first time). Where a check fails
        (more candidates than K in a frame, NMS not converged) the batch is decoded by
        decode_exact, which gives the same detections with host round trips."""
        if self._result is None:
            self._result = self._read()
        return self._result

    def _read(self) -> list[Detections]:
        packed = self.packed.numpy()
        if not packed[:, -1].all():
            log.debug("detector batch decoded exactly (a crowded frame or a long NMS chain)")
            return decode_exact(self.out, self.cfg)
        faces = packed[:, : self.m * 15].reshape(len(packed), self.m, 15)
        counts = packed[:, -2].astype(np.int64).tolist()
        return [_detections(f[:c]) for f, c in zip(faces, counts)]


def launch_decode(out: NetOutputs, cfg: DetectorConfig) -> PendingDecode:
    """Queue the decoding of N frames' outputs and return at once: fixed shapes on the device,
    so nothing waits for the host inside the batch (each frame's K strongest candidates,
    candidate_cap; greedy NMS per frame, greedy_nms_dense; the min-size filter; `max_faces`
    per frame, strongest first), then one packed copy to the host (boxes, scores, points,
    counts and the two checks), started without waiting (pipeline.device.HostCopy). The host
    reads it with `result()`, after other work: tracking the previous chunk overlaps it."""
    return PendingDecode(out, cfg)


def _detections(rows: np.ndarray) -> Detections:
    """float32 [M, 15] rows (x1, y1, x2, y2, score, 5 points x, y) -> Detections."""
    if len(rows) == 0:
        return Detections.empty()
    return Detections(
        np.ascontiguousarray(rows[:, :4]),
        np.ascontiguousarray(rows[:, 4]),
        np.ascontiguousarray(rows[:, 5:].reshape(-1, 5, 2)),
    )


def decode_device(out: NetOutputs, cfg: DetectorConfig, cap: int | None = None) -> torch.Tensor:
    """decode_batch's device part: fixed-shape ops only (no nonzero, boolean indexing or
    scalar reads), K = min(cap (default DEVICE_TOP_K), A) candidates a frame. -> float32
    [N, M * 15 + 2] on the device, M = min(max_faces, K): per frame M rows (x1, y1, x2, y2,
    score, 5 points x, y), the first `count` of them faces (strongest first), then count, then
    1.0 where the frame's decoding is exact (its candidates fit K and the batch's NMS
    converged), else 0.0."""
    loc, conf, landm, priors, size = out
    k = min(cap or DEVICE_TOP_K, conf.shape[1])
    m = min(cfg.max_faces, k)
    scores = conf[..., 1]
    _, idx = torch.topk(scores, k, dim=1)  # [N, K]: the K best, ties in no set order
    # decreasing score, equal scores by anchor (as the exact path's stable sort has them):
    # RetinaFace gives equal scores to neighbouring anchors, and their boxes differ
    idx = idx.sort(1).values
    top, order = scores.gather(1, idx).sort(dim=1, descending=True, stable=True)
    idx = idx.gather(1, order)
    valid = top > cfg.threshold
    fits = (scores > cfg.threshold).sum(1) <= k
    pri = priors[idx]
    boxes = decode_boxes(loc.gather(1, idx[..., None].expand(-1, -1, 4)), pri) * size.repeat(2)
    pts = decode_landmarks(landm.gather(1, idx[..., None].expand(-1, -1, 10)), pri) * size
    keep, converged = greedy_nms_dense(boxes, valid, cfg.nms)
    side = torch.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    keep = keep & (side >= cfg.min_size_px)
    keep = keep & (keep.cumsum(1) <= cfg.max_faces)
    first = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :m]  # kept first
    rows = torch.cat([boxes, top[..., None], pts.flatten(2)], -1)  # [N, K, 15]
    rows = rows.gather(1, first[..., None].expand(-1, -1, 15))
    count = keep.sum(1, keepdim=True).to(torch.float32)
    exact = (fits & converged).to(torch.float32)[:, None]
    return torch.cat([rows.flatten(1), count, exact], 1)


def decode_exact(out: NetOutputs, cfg: DetectorConfig) -> list[Detections]:
    """decode_batch with no cap on candidates: those over the threshold (a `nonzero`),
    one `batched_nms` with the frame index as the category, then the min-size filter and
    `max_faces` per frame. Its host round trips make it the path of rare batches only."""
    loc, conf, landm, priors, size = out
    n = loc.shape[0]
    scores = conf[..., 1]
    fi, ai = torch.nonzero(scores > cfg.threshold, as_tuple=True)
    if fi.numel() == 0:
        return [Detections.empty() for _ in range(n)]
    pri = priors[ai]
    boxes = decode_boxes(loc[fi, ai], pri) * size.repeat(2)
    pts = decode_landmarks(landm[fi, ai], pri) * size
    sc = scores[fi, ai]
    keep = batched_nms(boxes, sc, fi, cfg.nms)  # decreasing score
    boxes, pts, sc, fi = boxes[keep], pts[keep], sc[keep], fi[keep]
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    big = side >= cfg.min_size_px
    boxes, pts, sc, fi = boxes[big], pts[big], sc[big], fi[big]
    order = torch.sort(fi, stable=True).indices  # by frame, strongest first within a frame
    packed = torch.cat([boxes[order], sc[order, None], pts[order].flatten(1)], 1).cpu().numpy()
    frame_of = fi[order].cpu().numpy()
    starts = np.searchsorted(frame_of, np.arange(n))
    counts = np.bincount(frame_of, minlength=n)
    return [_detections(packed[b : b + min(c, cfg.max_faces)]) for b, c in zip(starts, counts)]
