"""A small Conformer (Gulati et al., Interspeech 2020) for LiRA's temporal model.

Block: x + FF/2 -> x + MHSA -> x + Conv -> x + FF/2 -> LayerNorm, with a key-padding mask.
Two simplifications, both for variable-length batches: positions are absolute sinusoids
added once at the input (the depthwise convolution still sees relative order), and the
convolution module normalises with LayerNorm instead of BatchNorm (padded frames would
otherwise enter the batch statistics). Padded frames are zeroed before every convolution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoids(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Sinusoidal position encodings [length, dim]."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: pe[:, 1::2].shape[1]])
    return pe


class FeedForward(nn.Module):
    """LayerNorm -> Linear(d, m*d) -> SiLU -> dropout -> Linear(m*d, d) -> dropout."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mult * dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, d] -> [B, T, d]."""
        return self.net(x)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise (2d) + GLU -> depthwise conv (k, same) -> LayerNorm -> SiLU ->
    pointwise -> dropout."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, T, d]; mask [B, T] bool (valid) or None -> [B, T, d]."""
        y = self.norm(x)
        if mask is not None:
            y = y * mask[..., None]
        y = nn.functional.glu(self.pw1(y.transpose(1, 2)), dim=1)  # [B, d, T]
        if mask is not None:
            y = y * mask[:, None, :]
        y = self.dw(y).transpose(1, 2)
        y = nn.functional.silu(self.norm2(y))
        return self.drop(self.pw2(y.transpose(1, 2)).transpose(1, 2))


class ConformerBlock(nn.Module):
    """One Conformer block (see module doc)."""

    def __init__(self, dim: int, heads: int, ff_mult: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(dim, ff_mult, dropout)
        self.norm_att = nn.LayerNorm(dim)
        self.att = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel, dropout)
        self.ff2 = FeedForward(dim, ff_mult, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, T, d]; mask [B, T] bool (True = valid) -> [B, T, d]."""
        x = x + 0.5 * self.ff1(x)
        y = self.norm_att(x)
        pad = None if mask is None else ~mask
        y, _ = self.att(y, y, y, key_padding_mask=pad, need_weights=False)
        x = x + self.drop(y)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class Conformer(nn.Module):
    """Input projection + positions + `layers` Conformer blocks: [B, T, in] -> [B, T, d]."""

    def __init__(
        self,
        in_dim: int,
        dim: int = 256,
        layers: int = 4,
        heads: int = 4,
        ff_mult: int = 4,
        kernel: int = 31,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            ConformerBlock(dim, heads, ff_mult, kernel, dropout) for _ in range(layers)
        )
        self.dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, T, in]; mask [B, T] bool or None -> [B, T, d] (padded rows zero)."""
        y = self.proj(x) + sinusoids(x.shape[1], self.dim, x.device)[None]
        for block in self.blocks:
            y = block(y, mask)
        return y if mask is None else y * mask[..., None]
