"""Landmark models behind one call: `batch(frames: list of RGB [H, W, 3], boxes: list of
[M, 4], points5: list of [M, 5, 2]) -> list of landmarks [M, K, 2]`, source pixels.

`retina5` returns the detector's own points (no second network: the fast CPU choice; 5 for
RetinaFace, in the detector's declared layout); `fan68` runs FAN 2D (face-alignment's network)
on 256x256 crops around each box, placed by the detector's declared box convention, batched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.device import batch_for
from pipeline.faces.detect import autocast, frames_tensor, import_fa, load_weights
from pipeline.faces.detection import (
    FIVE_POINTS,
    RETINAFACE_BOXES,
    BoxConvention,
    FaceDetector,
    PointLayout,
)
from pipeline.faces.warp import warp_batch
from schemas.config import LandmarkConfig

# FAN's input and heatmap sides, and face-alignment's crop rule: window side = 200 * scale px
# with scale = (w + h) / the detector's reference scale (its BoxConvention).
log = logging.getLogger(__name__)

FAN_INPUT = 256
FAN_HEATMAP = 64
FAN_SCALE_FACTOR = 200.0

LandmarkJob = tuple[Any, list[np.ndarray], list[np.ndarray]]
"""One chunk for `batch_many`: (frames uint8 RGB [N, H, W, 3], boxes per frame [M, 4],
detector points per frame [M, P, 2])."""


class Retina5:
    """The detector's own points, as they are (`layout`: the detector's PointLayout)."""

    kind = "retina5"

    def __init__(self, layout: PointLayout = FIVE_POINTS) -> None:
        self.layout = layout
        self.points = len(layout.names)

    def batch(
        self, frames: list[np.ndarray], boxes: list[np.ndarray], points5: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Per-frame lists in, per-frame [M, P, 2] out."""
        return [p.astype(np.float32) for p in points5]

    def batch_many(self, jobs: Sequence[LandmarkJob]) -> list[list[np.ndarray]]:
        """`batch` per job (no network to share)."""
        return [self.batch(*job) for job in jobs]


def fan_windows(
    boxes: np.ndarray, convention: BoxConvention = RETINAFACE_BOXES
) -> tuple[np.ndarray, np.ndarray]:
    """FAN crop windows for boxes [M, 4] of a detector with box `convention`: centres [M, 2]
    and sides [M] in source px."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    up = h * convention.centre_y_offset
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - up], 1)
    side = FAN_SCALE_FACTOR * (w + h) / convention.reference_scale
    return centre, side


def heatmap_points(hm: np.ndarray) -> np.ndarray:
    """Heatmaps [M, K, 64, 64] -> points [M, K, 2] in heatmap pixels: the argmax moved a
    quarter pixel towards the higher neighbour (face-alignment's sub-pixel rule)."""
    m, k, h, w = hm.shape
    flat = hm.reshape(m, k, -1)
    idx = flat.argmax(-1)
    y, x = np.divmod(idx, w)
    xi, yi = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2)
    mi, ki = np.meshgrid(np.arange(m), np.arange(k), indexing="ij")
    dx = hm[mi, ki, yi, xi + 1] - hm[mi, ki, yi, xi - 1]
    dy = hm[mi, ki, yi + 1, xi] - hm[mi, ki, yi - 1, xi]
    inner = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    px = x + 0.5 + np.where(inner, 0.25 * np.sign(dx), 0.0)
    py = y + 0.5 + np.where(inner, 0.25 * np.sign(dy), 0.0)
    return np.stack([px, py], -1).astype(np.float32)


def heatmap_points_torch(hm: torch.Tensor) -> torch.Tensor:
    """`heatmap_points` on the heatmaps' device: [M, K, 64, 64] -> float32 [M, K, 2]."""
    m, k, h, w = hm.shape
    flat = hm.reshape(m, k, h * w)
    idx = flat.argmax(-1)
    y, x = torch.div(idx, w, rounding_mode="floor"), idx % w
    xi, yi = x.clamp(1, w - 2), y.clamp(1, h - 2)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(-1, (yy * w + xx)[..., None])[..., 0]

    dx = at(yi, xi + 1) - at(yi, xi - 1)
    dy = at(yi + 1, xi) - at(yi - 1, xi)
    inner = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    zero = torch.zeros((), dtype=hm.dtype, device=hm.device)
    px = x.to(torch.float32) + 0.5 + torch.where(inner, 0.25 * torch.sign(dx), zero).float()
    py = y.to(torch.float32) + 0.5 + torch.where(inner, 0.25 * torch.sign(dy), zero).float()
    return torch.stack([px, py], -1)


def fan_crops(
    frames: torch.Tensor, owner: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor
) -> torch.Tensor:
    """FAN inputs for faces in frames uint8 [N, H, W, 3] on any device: face r is the square
    window of side sides[r] about centres[r] (source px) of frame owner[r], scaled to 256x256
    (cv2.warpAffine's bilinear, zero outside the frame) -> uint8 [R, 256, 256, 3]."""
    k = FAN_INPUT / sides.to(torch.float64)
    c = centres.to(torch.float64)
    zero = torch.zeros_like(k)
    m = torch.stack(
        [
            torch.stack([k, zero, FAN_INPUT / 2 - c[:, 0] * k], -1),
            torch.stack([zero, k, FAN_INPUT / 2 - c[:, 1] * k], -1),
        ],
        1,
    )
    return warp_batch(frames, owner, m, FAN_INPUT, border="constant")


def load_fan(weights: str, device: str, cache: str | None = None) -> torch.nn.Module:
    """FAN 2D (4 stacked hourglasses) from a state dict at a path, URI or URL."""
    FAN = import_fa("face_alignment.models.fan").FAN  # noqa: N806

    return load_weights(FAN(4), weights, device, cache)


class Fan68:
    """FAN 2D: 68 iBUG points per box, all faces of a chunk in batches of `batch_size`;
    `boxes`: the detector's box convention (where each crop goes).

    How FAN runs follows the device, each choice also settable (tests run every one on CPU
    tensors):
    * `channels_last` (default: on an accelerator): network and input in NHWC memory, which
      cuDNN's half-precision convolutions prefer; on a CPU plain NCHW runs the hourglasses
      about 2x faster.
    * `half` (default: on an accelerator when `dtype` is not float32): the network's weights
      converted to `dtype` once, its input cast once, instead of autocast re-casting every
      layer's weights at every call; on a CPU autocast stays (as before).
    * `faces.landmarks.compile` (off by default): `torch.compile` of the network (`backend`,
      inductor). Its first batches compile (minutes); if compiling or the compiled call
      fails, FAN runs uncompiled from then on and the reason is logged.
    """

    kind = "fan68"
    points = 68

    def __init__(
        self,
        cfg: LandmarkConfig,
        device: str = "cpu",
        cache: str | None = None,
        net: torch.nn.Module | None = None,
        dtype: str = "float32",
        boxes: BoxConvention = RETINAFACE_BOXES,
        channels_last: bool | None = None,
        half: bool | None = None,
        backend: Any = "inductor",
    ) -> None:
        self.cfg = cfg
        self.boxes = boxes
        self.device = device
        self.dtype = dtype
        accel = torch.device(device).type != "cpu"
        self.channels_last = accel if channels_last is None else channels_last
        self.half = (accel and dtype != "float32") if half is None else half
        net = net if net is not None else load_fan(cfg.fan_weights, device, cache)
        if self.half:
            net = net.to(getattr(torch, dtype))
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._in_dtype = getattr(torch, dtype) if self.half else torch.float32
        self.compiled: Any = torch.compile(net, backend=backend) if cfg.compile else None
        self.batch_size = batch_for(device, cfg.batch_size, cpu=4, gpu=256)

    def batch(
        self,
        frames: torch.Tensor | np.ndarray | list[np.ndarray],
        boxes: list[np.ndarray],
        points5: list[np.ndarray],
    ) -> list[np.ndarray]:
        """Frames uint8 RGB [N, H, W, 3] (a tensor on any device, or numpy) with per-frame
        boxes in, per-frame [M, 68, 2] out (source px). Crops are cut on the device in one
        batched warp; heatmap peaks are found there; only the points come back."""
        return self.batch_many([(frames, boxes, points5)])[0]

    @torch.inference_mode()
    def batch_many(self, jobs: Sequence[LandmarkJob]) -> list[list[np.ndarray]]:
        """`batch` over several chunks at once (several videos' frames, of any sizes): each
        chunk's faces are cut to 256x256 crops on its own frames, then FAN runs over the crops
        of all of them in batches of `batch_size` (a device owner fed by many videos fills its
        batches; pipeline/faces/feed.py). Returns `batch`'s output per job, in order."""
        cut = [self._crops(frames, boxes) for frames, boxes, _ in jobs]
        crops = [c[0] for c in cut if c is not None]
        if not crops:
            return [[np.zeros((len(b), 68, 2), np.float32) for b in j[1]] for j in jobs]
        hp = self._heatmap_points(torch.cat(crops))
        out, start = [], 0
        for (_, boxes, _), c in zip(jobs, cut):
            counts = [len(b) for b in boxes]
            found = [np.zeros((n, 68, 2), np.float32) for n in counts]
            if c is not None:
                _, centre, side = c
                peaks = hp[start : start + len(side)]
                src = centre[:, None, :] + (peaks / FAN_HEATMAP - 0.5) * side[:, None, None]
                start += len(side)
                at = np.cumsum([0, *counts])
                found = [src[a:b].astype(np.float32) for a, b in zip(at[:-1], at[1:])]
            out.append(found)
        return out

    def _crops(
        self, frames: torch.Tensor | np.ndarray | list[np.ndarray], boxes: list[np.ndarray]
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray] | None:
        """One chunk's FAN inputs: crops uint8 [R, 256, 256, 3] on the device and their
        windows (centre [R, 2], side [R], source px); None when the chunk has no face."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return None
        if isinstance(frames, list):
            frames = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
        x_dev = frames_tensor(frames, self.device)
        allb = np.concatenate([b for b in boxes if len(b)]).astype(np.float64)
        centre, side = fan_windows(allb, self.boxes)
        owner = torch.from_numpy(np.repeat(np.arange(len(boxes)), counts))
        dev = x_dev.device
        crops = fan_crops(
            x_dev, owner.to(dev), torch.from_numpy(centre).to(dev), torch.from_numpy(side).to(dev)
        )
        return crops, centre, side

    def _heatmap_points(self, crops: torch.Tensor) -> np.ndarray:
        """FAN over crops uint8 [R, 256, 256, 3] in batches of `batch_size`: heatmap peaks
        [R, 68, 2] (heatmap px, float64), one copy back."""
        pts = []
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        for s in range(0, len(crops), self.batch_size):
            # float one batch at a time (memory bounded by batch_size, whatever the number of
            # videos fed), in the network's memory layout (see the class)
            x = crops[s : s + self.batch_size].permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=layout).to(self._in_dtype).div_(255)
            with autocast(self.device, "float32" if self.half else self.dtype):
                y = self._forward(x)
            y = y[-1] if isinstance(y, (list, tuple)) else y
            pts.append(heatmap_points_torch(y.float()))
        hp = torch.cat(pts).cpu().numpy().astype(np.float64)
        timer = getattr(self, "timer", None)
        if timer is not None:
            timer.mark("fan", crops.device)
        return hp

    def _forward(self, x: torch.Tensor) -> Any:
        """The network on x [B, 3, 256, 256]: compiled where asked, else (or after the
        compiled call failed once, logged) as it is."""
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001 - a compiler's failure: run uncompiled
                # torch's wrapper says which backend, its next line the compiler's error
                why = " ".join([ln.strip() for ln in str(exc).splitlines() if ln.strip()][:2])
                log.warning("FAN: torch.compile failed (%s: %s); running it uncompiled",
                            type(exc).__name__, why)  # fmt: skip
                self.compiled = None
        return self.net(x)


def build_landmarker(
    cfg: LandmarkConfig,
    device: str = "cpu",
    cache: str | None = None,
    dtype: str = "float32",
    detector: type[FaceDetector] | FaceDetector | None = None,
) -> Retina5 | Fan68:
    """The landmark model the config names, for the boxes and points of `detector` (its
    declared box convention and point layout; RetinaFace's when None)."""
    boxes = detector.boxes if detector is not None else RETINAFACE_BOXES
    points = detector.points if detector is not None else FIVE_POINTS
    if cfg.kind == "fan68":
        return Fan68(cfg, device, cache, dtype=dtype, boxes=boxes)
    return Retina5(points)
