"""Clip augmentations on batches of gray face crops, uint8 [B, T, H, W] -> same.

Every transform acts on a whole clip (the same flip / crop / square for all its frames), so
motion stays intact; labels never change (a mirrored face shows the same affect). Randomness
comes from an explicit `torch.Generator`, so a seeded run repeats exactly.

Fine-tuning (METHOD.md): horizontal flip p = 0.5 (vaerr's default; the public code has no
augmentation unless --augment); random crop (88 px, resized back to the input side, so the
network sees the framing it sees at inference; or, as the public code's RandomCrop, not
resized), cutout, time masking, time-out (the whole clip masked), salt-and-pepper noise and
solarisation exist and are off by default (`augment.*_p = 0`).
BYOL / DINO views (`make_view`): random resized crop to the view size, flip, brightness and
contrast jitter, blur, solarisation, time masking.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from schemas.train import AugmentConfig, ViewConfig

MID_GRAY = 128


def _u(gen: torch.Generator | None, n: int = 1) -> Tensor:
    return torch.rand(n, generator=gen)


def _randint(gen: torch.Generator | None, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _to_uint8(x: Tensor) -> Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def crop_resize(clip: Tensor, top: int, left: int, h: int, w: int, size: int) -> Tensor:
    """One region of every frame, resized (bilinear) to size x size: [T, H, W] -> [T, s, s]."""
    region = clip[:, top : top + h, left : left + w].float().unsqueeze(1)
    out = F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False)
    return _to_uint8(out.squeeze(1))


def time_mask(
    clip: Tensor, max_frames: int, gen: torch.Generator | None, fill: int = MID_GRAY
) -> Tensor:
    """A random run of 1..max_frames frames set to gray `fill`: [T, H, W]."""
    t = clip.shape[0]
    run = _randint(gen, 1, max(1, min(max_frames, t)))
    start = _randint(gen, 0, t - run)
    clip = clip.clone()
    clip[start : start + run] = fill
    return clip


def augment_clips(
    x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None, lengths: Tensor | None = None
) -> Tensor:
    """Fine-tuning augmentations of a batch: uint8 [B, T, H, W] -> uint8 [B, T, H', W']
    (H' = W' = crop_size when crop_resize is off and the crop is on, else H, W).

    lengths [B] (valid frames) keeps time masks inside the valid part of padded clips.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected uint8 clips [B, T, H, W], got {x.dtype} {tuple(x.shape)}")
    out = []
    _, t, h, w = x.shape
    for i in range(x.shape[0]):
        clip = x[i]
        n = int(lengths[i]) if lengths is not None else t
        if cfg.hflip_p and float(_u(gen)) < cfg.hflip_p:
            clip = clip.flip(-1)
        if cfg.crop_p and float(_u(gen)) < cfg.crop_p:
            c = min(cfg.crop_size, h, w)
            top, left = _randint(gen, 0, h - c), _randint(gen, 0, w - c)
            if not cfg.crop_resize:
                clip = clip[:, top : top + c, left : left + c]
            else:
                clip = crop_resize(clip, top, left, c, c, h)
            if cfg.crop_resize and w != h:
                clip = F.interpolate(clip.float().unsqueeze(1), size=(h, w)).squeeze(1).to(x.dtype)
        if cfg.cutout_p and float(_u(gen)) < cfg.cutout_p:
            ch, cw = clip.shape[-2:]  # the crop's size when it was not resized
            side = max(1, int(round(cfg.cutout_frac * min(ch, cw))))
            top, left = _randint(gen, 0, ch - side), _randint(gen, 0, cw - side)
            clip = clip.clone()
            clip[:, top : top + side, left : left + side] = cfg.fill
        if cfg.time_mask_p and float(_u(gen)) < cfg.time_mask_p and n > 1:
            clip = torch.cat([time_mask(clip[:n], cfg.time_mask_frames, gen, cfg.fill), clip[n:]])
        if cfg.time_out_p and float(_u(gen)) < cfg.time_out_p:
            clip = torch.full_like(clip, cfg.fill)
        if cfg.noise_p and float(_u(gen)) < cfg.noise_p:
            r = torch.rand(clip.shape, generator=gen)
            clip = clip.clone()
            clip[r < cfg.noise_amount / 2] = 0
            clip[(r >= cfg.noise_amount / 2) & (r < cfg.noise_amount)] = 255
        if cfg.solarise_p and float(_u(gen)) < cfg.solarise_p:
            clip = torch.where(clip >= cfg.solarise_threshold, 255 - clip, clip)
        out.append(clip)
    return torch.stack(out)


def _gaussian_blur(clip: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every frame: float [T, H, W]."""
    radius = max(1, int(math.ceil(2 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    y = clip.unsqueeze(1)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.squeeze(1)


def make_view(x: Tensor, cfg: ViewConfig, gen: torch.Generator | None = None) -> Tensor:
    """One self-supervised view of each clip: uint8 [B, T, H, W] -> uint8 [B, T, s, s].

    Random resized crop (area fraction in cfg.scale, aspect 3/4..4/3), flip, brightness /
    contrast jitter, Gaussian blur (sigma 0.1..2 px), solarisation and a time mask, each
    drawn once per clip.
    """
    b, t, h, w = x.shape
    out = []
    for i in range(b):
        area = float(torch.empty(1).uniform_(cfg.scale[0], cfg.scale[1], generator=gen)) * h * w
        logr = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
        ratio = float(torch.exp(logr))
        cw = max(1, min(w, int(round(math.sqrt(area * ratio)))))
        ch = max(1, min(h, int(round(math.sqrt(area / ratio)))))
        clip = crop_resize(
            x[i], _randint(gen, 0, h - ch), _randint(gen, 0, w - cw), ch, cw, cfg.size
        ).float()
        if float(_u(gen)) < cfg.hflip_p:
            clip = clip.flip(-1)
        if cfg.brightness:
            clip = clip * (
                1 + float(torch.empty(1).uniform_(-cfg.brightness, cfg.brightness, generator=gen))
            )
        if cfg.contrast:
            c = 1 + float(torch.empty(1).uniform_(-cfg.contrast, cfg.contrast, generator=gen))
            clip = (clip - clip.mean()) * c + clip.mean()
        if cfg.blur_p and float(_u(gen)) < cfg.blur_p:
            clip = _gaussian_blur(clip, float(torch.empty(1).uniform_(0.1, 2.0, generator=gen)))
        clip = _to_uint8(clip)
        if cfg.solarise_p and float(_u(gen)) < cfg.solarise_p:
            clip = torch.where(clip >= 128, 255 - clip, clip)
        if cfg.time_mask_p and float(_u(gen)) < cfg.time_mask_p and t > 1:
            clip = time_mask(clip, max(1, t // 5), gen)
        out.append(clip)
    return torch.stack(out)
