"""LiRA (Ma et al., Interspeech 2021): from the face alone, predict the clip's acoustic
features frame by frame. Encoder (front-end + ResNet trunk) -> Conformer -> MLP -> the
stacked audio features of each video frame (training.audio); L1 loss over valid frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pipeline.model.network import Encoder, lengths_to_mask
from schemas.train import LiraConfig
from training.pretext.conformer import Conformer


class LiraModel(nn.Module):
    """crops uint8 [B, T, 96, 96] (+ lengths [B]) -> predicted audio features [B, T, D]."""

    def __init__(self, encoder: Encoder, audio_dim: int, cfg: LiraConfig | None = None) -> None:
        super().__init__()
        c = cfg or LiraConfig()
        self.encoder = encoder
        self.conformer = Conformer(
            encoder.out_dim,
            c.conformer_dim,
            c.conformer_layers,
            c.conformer_heads,
            c.conformer_ff_mult,
            c.conformer_kernel,
            c.dropout,
        )
        self.head = nn.Sequential(
            nn.Linear(c.conformer_dim, c.mlp_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(c.mlp_hidden, audio_dim),
        )
        self.audio_dim = audio_dim

    def forward(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        """See the class docstring; padded frames' predictions are 0."""
        b, t = x.shape[0], x.shape[1]
        mask = lengths_to_mask(lengths, b, t)
        if mask is not None:
            mask = mask.to(x.device)
        feats = self.encoder(x, lengths)
        return self.head(self.conformer(feats, mask))


def lira_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over valid frames and all feature dims: pred/target [B, T, D],
    mask [B, T] bool (None: all valid)."""
    err = (pred.float() - target.float()).abs().mean(-1)  # [B, T]
    if mask is None:
        return err.mean()
    m = mask.to(err.device, err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def shift_targets(target: Tensor, lengths: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """The shuffled-audio control: each clip's valid frames circularly shifted by a random
    offset in [n/4, 3n/4] (fresh each call), so audio and face are never in sync but every
    clip keeps its own speaker and content statistics. target [B, T, D], lengths [B]."""
    out = target.clone()
    for i, n in enumerate(lengths.tolist()):
        if n < 2:
            continue
        lo = max(1, n // 4)
        k = int(torch.randint(lo, max(lo, n - lo) + 1, (1,), generator=gen))
        out[i, :n] = torch.roll(target[i, :n], k, dims=0)
    return out
