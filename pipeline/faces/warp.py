"""Batched geometry on any torch device: similarity fits and affine crops for many faces at once.

The tests compare it with a numpy reference (tests/geometry_reference.py): `similarity_batch` is
the closed-form 2-D least-squares similarity (equal to Umeyama's SVD solution in 2-D, no
reflection), `warp_batch` is cv2.warpAffine's bilinear sampling (pixel centres on integer
coordinates, BORDER_REPLICATE or BORDER_CONSTANT 0) done as four gathers from the frames
already on the device, so a crop never needs its whole frame copied or sent to the host.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def similarity_batch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity mapping each src [R, P, 2] onto dst [P, 2] -> affine
    matrices [R, 2, 3] (src dtype and device). Degenerate sources (all points equal) get
    unit scale and no rotation."""
    dst = dst.to(src)
    mu_s = src.mean(1, keepdim=True)
    mu_d = dst.mean(0)
    s = src - mu_s
    d = (dst - mu_d).expand_as(s)
    den = (s**2).sum((1, 2))
    ok = den > 0
    den = torch.where(ok, den, torch.ones_like(den))
    a = (s * d).sum((1, 2)) / den
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / den
    a = torch.where(ok, a, torch.ones_like(a))
    b = torch.where(ok, b, torch.zeros_like(b))
    lin = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], 1)  # [R, 2, 2]
    t = mu_d - (lin @ mu_s[:, 0, :, None])[..., 0]
    return torch.cat([lin, t[..., None]], 2)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """outer [.., 2, 3] after inner [.., 2, 3] as one [.., 2, 3] affine."""
    a = outer[..., :2] @ inner[..., :2]
    t = (outer[..., :2] @ inner[..., 2:])[..., 0] + outer[..., 2]
    return torch.cat([a, t[..., None]], -1)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of affine maps [R, 2, 3]."""
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - b * c
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], 1) / det[:, None, None]
    t = -(inv @ m[:, :, 2:])[..., 0]
    return torch.cat([inv, t[..., None]], 2)


def warp_batch(
    images: torch.Tensor,
    owner: torch.Tensor,
    m: torch.Tensor,
    size: int,
    border: str = "replicate",
    kernel: str = "auto",
) -> torch.Tensor:
    """Crops [R, size, size(, C)] uint8 from images uint8 [F, H, W(, C)]: crop r samples
    image owner[r] (int64 [R]) through its image -> crop affine m[r] ([R, 2, 3]),
    bilinearly, like cv2.warpAffine(INTER_LINEAR) with BORDER_REPLICATE ("replicate") or
    BORDER_CONSTANT 0 ("constant"), on the images' device; memory O(R size^2).

    kernel: "tensor" (gathers; any device), "cv2" (cv2.warpAffine per crop; CPU tensors
    only) or "auto": cv2 for CPU tensors, where it is about 40x faster than the gathers on 2
    cores (large float temporaries), tensor elsewhere. Both agree within 1 gray level."""
    if kernel == "cv2" or (kernel == "auto" and images.device.type == "cpu"):
        return _warp_cv2(images, owner, m, size, border)
    dev = images.device
    f, h, w = images.shape[:3]
    chans = images.shape[3] if images.dim() == 4 else 1
    inv = invert_affine(m.to(dev, torch.float64)).to(torch.float32)
    r = inv.shape[0]
    if r == 0:
        return torch.zeros((0, size, size) + images.shape[3:], dtype=torch.uint8, device=dev)
    g = torch.arange(size, device=dev, dtype=torch.float32)
    gx, gy = g[None, None, :], g[None, :, None]
    sx = inv[:, 0, 0, None, None] * gx + inv[:, 0, 1, None, None] * gy + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * gx + inv[:, 1, 1, None, None] * gy + inv[:, 1, 2, None, None]
    x0, y0 = sx.floor(), sy.floor()
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    flat = images.reshape(f * h * w, chans)
    base = owner.to(dev, torch.int64)[:, None, None] * (h * w)
    out = torch.zeros((r, size, size, chans), dtype=torch.float32, device=dev)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            wgt = wx * wy
            if border == "constant":
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                wgt = wgt * inside
            xi, yi = xi.clamp(0, w - 1), yi.clamp(0, h - 1)
            vals = flat[(base + yi * w + xi).reshape(-1)].reshape(r, size, size, chans)
            out += vals.to(torch.float32) * wgt[..., None]
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if images.dim() == 4 else out[..., 0]


def _warp_cv2(
    images: torch.Tensor, owner: torch.Tensor, m: torch.Tensor, size: int, border: str
) -> torch.Tensor:
    """warp_batch's CPU kernel: cv2.warpAffine per crop on numpy views of the CPU images."""
    imgs = images.numpy()
    mats = m.detach().cpu().numpy().astype(np.float64)
    own = owner.cpu().numpy()
    flag = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    out = np.empty((len(mats), size, size) + imgs.shape[3:], np.uint8)
    for i, (o, mat) in enumerate(zip(own, mats)):
        out[i] = cv2.warpAffine(
            imgs[o], mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=flag
        ).reshape(out.shape[1:])
    return torch.from_numpy(out)
