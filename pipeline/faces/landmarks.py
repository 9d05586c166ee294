"""Landmark models behind one call: `batch(frames: list of RGB [H, W, 3], boxes: list of
[M, 4], points5: list of [M, 5, 2]) -> list of landmarks [M, K, 2]`, source pixels.

`retina5` returns the detector's own 5 points (no second network: the fast CPU choice);
`fan68` runs FAN 2D (face-alignment's network) on 256x256 crops around each box, batched.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline.device import batch_for
from pipeline.faces.detect import autocast, load_weights
from schemas.config import LandmarkConfig

# face-alignment's crop convention for RetinaFace boxes: window side = 200 * scale px with
# scale = (w + h) / 165, centre moved up by 0.12 * h (face_alignment.api / utils).
FAN_INPUT = 256
FAN_HEATMAP = 64
FAN_SCALE_FACTOR = 200.0
RETINA_REFERENCE_SCALE = 165.0
CENTER_Y_OFFSET = 0.12


class Retina5:
    """The detector's 5 points, as they are."""

    kind = "retina5"
    points = 5

    def batch(
        self, frames: list[np.ndarray], boxes: list[np.ndarray], points5: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Per-frame lists in, per-frame [M, 5, 2] out."""
        return [p.astype(np.float32) for p in points5]


def fan_windows(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAN crop windows for boxes [M, 4]: centres [M, 2] and sides [M] in source px."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    centre = np.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - h * CENTER_Y_OFFSET], 1
    )
    side = FAN_SCALE_FACTOR * (w + h) / RETINA_REFERENCE_SCALE
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


def load_fan(weights: str, device: str, cache: str | None = None) -> torch.nn.Module:
    """FAN 2D (4 stacked hourglasses) from a state dict at a path, URI or URL."""
    from face_alignment.models import FAN

    return load_weights(FAN(4), weights, device, cache)


class Fan68:
    """FAN 2D: 68 iBUG points per box, all faces of a chunk in batches of `batch_size`."""

    kind = "fan68"
    points = 68

    def __init__(
        self,
        cfg: LandmarkConfig,
        device: str = "cpu",
        cache: str | None = None,
        net: torch.nn.Module | None = None,
        dtype: str = "float32",
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.net = net if net is not None else load_fan(cfg.fan_weights, device, cache)
        self.batch_size = batch_for(device, cfg.batch_size, cpu=4, gpu=32)

    @torch.inference_mode()
    def batch(
        self, frames: list[np.ndarray], boxes: list[np.ndarray], points5: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Per-frame lists in, per-frame [M, 68, 2] out (source px)."""
        crops, centres, sides, owner = [], [], [], []
        for i, (frame, b) in enumerate(zip(frames, boxes)):
            if len(b) == 0:
                continue
            c, s = fan_windows(b)
            for cj, sj in zip(c, s):
                k = FAN_INPUT / sj
                m = np.array([[k, 0, FAN_INPUT / 2 - cj[0] * k], [0, k, FAN_INPUT / 2 - cj[1] * k]])
                crops.append(cv2.warpAffine(frame, m, (FAN_INPUT, FAN_INPUT)))
            centres.append(c)
            sides.append(s)
            owner += [i] * len(b)
        out = [np.zeros((len(b), 68, 2), np.float32) for b in boxes]
        if not crops:
            return out
        # contiguous NCHW: a transposed view of the stacked HWC crops would reach the
        # network as channels-last, which runs FAN's hourglasses about 2x slower on a CPU
        x = torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))
        x = x.float().div_(255.0)
        heat = []
        for s in range(0, len(x), self.batch_size):
            with autocast(self.device, self.dtype):
                y = self.net(x[s : s + self.batch_size].to(self.device))
            y = y[-1] if isinstance(y, (list, tuple)) else y
            heat.append(y.float().cpu().numpy())
        pts = heatmap_points(np.concatenate(heat))
        centre = np.concatenate(centres)
        side = np.concatenate(sides)
        src = centre[:, None, :] + (pts / FAN_HEATMAP - 0.5) * side[:, None, None]
        owner_arr = np.asarray(owner)
        for i in range(len(boxes)):
            out[i] = src[owner_arr == i].astype(np.float32)
        return out


def build_landmarker(
    cfg: LandmarkConfig, device: str = "cpu", cache: str | None = None, dtype: str = "float32"
) -> Retina5 | Fan68:
    """The landmark model the config names."""
    return Fan68(cfg, device, cache, dtype=dtype) if cfg.kind == "fan68" else Retina5()
