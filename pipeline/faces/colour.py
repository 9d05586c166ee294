"""Decoded planes -> RGB (for the detector) and gray (for the crops) on any torch device.

PyAV's per-frame `to_ndarray(format="rgb24")` runs swscale on one CPU thread per frame and was
the host-side limit of the face stage on a GPU node (issue 15). Here the decoder's own YUV
planes travel as uint8 (1.5 bytes per pixel for 4:2:0 instead of 3) and one batched conversion
runs on the face stage's device with the stream's colour matrix and range:

    Y' = (Y - 16) * 255/219,  C' = (C - 128) * 255/224      (limited, "tv"/"mpeg" range)
    Y' = Y,                   C' = C - 128                  (full, "pc"/"jpeg" range)
    R = Y' + 2 (1 - Kr) Cr',  B = Y' + 2 (1 - Kb) Cb',  G = (Y' - Kr R - Kb B) / Kg

with (Kr, Kb) = (0.299, 0.114) for BT.601 and (0.2126, 0.0722) for BT.709; chroma is upsampled
by repetition (what swscale's unscaled converters do). Gray is the full-range luma Y' (what
PyAV's `format="gray"` returns). Formats outside this table carry PyAV-converted RGB instead
(`Planes.rgb`), and gray is then taken from it with OpenCV's fixed-point BT.601 weights.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline.device import to_device
from pipeline.video import SUBSAMPLING, Planes

# (Kr, Kb) of the supported colour matrices.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _rotate(x: torch.Tensor, rotation: int, dims: tuple[int, int]) -> torch.Tensor:
    """np.rot90 semantics (counter-clockwise quarter turns) on the given (H, W) dims."""
    k = int(round(rotation / 90.0)) % 4
    return torch.rot90(x, k, dims).contiguous() if k else x


def rgb_to_gray(rgb: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """uint8 RGB [N, H, W, 3] -> uint8 gray [N, H, W], OpenCV's COLOR_RGB2GRAY (fixed point
    (4899 R + 9617 G + 1868 B + 8192) >> 14; within 1 level of cv2's SIMD rounding), on the
    tensor's device. kernel "auto":
    cv2 itself for CPU tensors (10x faster there), the tensor formula elsewhere."""
    if kernel == "cv2" or (kernel == "auto" and rgb.device.type == "cpu"):
        frames = rgb.numpy()
        return torch.from_numpy(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))
    x = rgb.to(torch.int32)
    g = x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + 8192
    return (g >> 14).to(torch.uint8)


def _chroma_terms(u: torch.Tensor, v: torch.Tensor, matrix: str, full_range: bool) -> torch.Tensor:
    """(R - Y', G - Y', B - Y') at chroma resolution, float32 [N, h', w', 3]."""
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    cs = 1.0 if full_range else 255.0 / 224.0
    r_c = (v.to(torch.float32) - 128.0) * (cs * 2.0 * (1.0 - kr))
    b_c = (u.to(torch.float32) - 128.0) * (cs * 2.0 * (1.0 - kb))
    g_c = (r_c * kr + b_c * kb) * (-1.0 / kg)
    return torch.stack([r_c, g_c, b_c], -1)


def _repeat(c: torch.Tensor, sub: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Chroma-resolution [N, h', w', C] repeated to [N, h, w, C] (nearest, like swscale's
    unscaled converters)."""
    sx, sy = sub
    n, ch, cw, k = c.shape
    up = c[:, :, None, :, None, :].expand(n, ch, sy, cw, sx, k)
    return up.reshape(n, ch * sy, cw * sx, k)[:, :h, :w]


def _luma(y: torch.Tensor, full_range: bool) -> torch.Tensor:
    yf = y.to(torch.float32)
    return yf if full_range else (yf - 16.0) * (255.0 / 219.0)


def yuv_to_rgb(
    y: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    matrix: str,
    full_range: bool,
    sub: tuple[int, int] = (2, 2),
) -> torch.Tensor:
    """Planar YUV (uint8 y [N, H, W], u/v [N, h', w'], one device) -> RGB uint8 [N, H, W, 3],
    computed in float32 and truncated (as swscale does: within 2 levels of PyAV's rgb24)."""
    h, w = y.shape[1:]
    up = _repeat(_chroma_terms(u, v, matrix, full_range), sub, h, w)
    return (_luma(y, full_range)[..., None] + up).floor_().clamp_(0, 255).to(torch.uint8)


def yuv_to_gray(
    y: torch.Tensor,
    u: torch.Tensor | None,
    v: torch.Tensor | None,
    matrix: str,
    full_range: bool,
    sub: tuple[int, int] = (2, 2),
) -> torch.Tensor:
    """Gray uint8 [N, H, W] as PyAV's format="gray" gives it: for BT.601 streams the
    full-range Y' alone (u, v unused); for BT.709 the BT.601 luma 0.299 R + 0.587 G +
    0.114 B of the decoded RGB (truncated, clipped: swscale goes through RGB there), which
    is also what OpenCV's RGB2GRAY of the RGB gives."""
    yf = _luma(y, full_range)
    if matrix != "bt601":
        h, w = y.shape[1:]
        wts = torch.tensor([0.299, 0.587, 0.114], device=yf.device)
        up = _repeat(_chroma_terms(u, v, matrix, full_range), sub, h, w)
        yf = ((yf[..., None] + up).floor_().clamp_(0, 255) * wts).sum(-1)
    return yf.round_().clamp_(0, 255).to(torch.uint8)


def planes_to_device(
    planes: Planes,
    device: str | torch.device,
    select: np.ndarray | None = None,
    want_rgb: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One chunk's planes -> (upright RGB uint8 [len(select), H, W, 3] of the selected frames
    (all when `select` is None; None when not `want_rgb`), upright gray uint8 [N, H, W] of
    every frame) on `device`. The planes cross to the device once, as uint8."""
    rot = planes.rotation
    if planes.rgb is not None:
        rgb = _rotate(to_device(torch.from_numpy(planes.rgb), device), rot, (1, 2))
        gray = rgb_to_gray(rgb)
        if select is not None:
            rgb = rgb[torch.from_numpy(np.asarray(select, np.int64)).to(rgb.device)]
        return (rgb if want_rgb else None), gray
    sub = SUBSAMPLING[planes.fmt]

    def up(a: np.ndarray) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(a)), device)

    y = up(planes.y)
    u = v = None
    if want_rgb or planes.matrix != "bt601":
        u, v = up(planes.u), up(planes.v)
    gray = _rotate(yuv_to_gray(y, u, v, planes.matrix, planes.full_range, sub), rot, (1, 2))
    if not want_rgb:
        return None, gray
    if select is not None and len(select) != len(planes):
        sel = torch.from_numpy(np.asarray(select, np.int64)).to(y.device)
        y, u, v = y[sel], u[sel], v[sel]
    rgb = yuv_to_rgb(y, u, v, planes.matrix, planes.full_range, sub)
    return _rotate(rgb, rot, (1, 2)), gray
