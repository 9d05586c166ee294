"""Video-BYOL (Grill et al. 2020, applied to face clips): an online encoder + projector +
predictor learns to predict, from one augmented view of a clip, the EMA target network's
projection of another view; normalised-MSE loss, symmetrised. Clip embedding = the mean of
the encoder's per-frame features over the clip's valid frames.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.network import Encoder, lengths_to_mask


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear (BYOL's projector / predictor)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


def clip_embedding(encoder: Encoder, x: Tensor, lengths: Tensor | Sequence[int] | None) -> Tensor:
    """Mean per-frame feature over valid frames: crops [B, T, H, W] -> [B, D]."""
    feats = encoder(x, lengths)  # [B, T, D], padded frames 0
    mask = lengths_to_mask(lengths, x.shape[0], x.shape[1])
    if mask is None:
        return feats.mean(1)
    n = mask.to(feats.device).sum(1, keepdim=True).clamp_min(1)
    return feats.sum(1) / n


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """2 - 2 cos(p, z), mean over the batch; z is a target (no gradient)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)).mean()


def ema_momentum(base: float, progress: float) -> float:
    """BYOL/DINO schedule: 1 - (1 - base) (cos(pi p) + 1) / 2, progress p in [0, 1]."""
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online (parameters; buffers copied)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


class ByolModel(nn.Module):
    """forward(view1, view2, lengths) -> symmetric BYOL loss (the whole step inside forward,
    so DDP sees one graph). `encoder` is the online encoder (what fine-tuning loads)."""

    def __init__(self, encoder: Encoder, proj_dim: int = 256, hidden: int = 1024) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(encoder.out_dim, hidden, proj_dim)
        self.predictor = mlp(proj_dim, hidden, proj_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_encoder.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)

    def forward(self, v1: Tensor, v2: Tensor, lengths: Tensor | None = None) -> Tensor:
        """v1, v2 uint8 [B, T, S, S] (two views of the same clips); lengths [B]."""
        p1 = self.predictor(self.projector(clip_embedding(self.encoder, v1, lengths)))
        p2 = self.predictor(self.projector(clip_embedding(self.encoder, v2, lengths)))
        with torch.no_grad():
            z1 = self.target_projector(clip_embedding(self.target_encoder, v1, lengths))
            z2 = self.target_projector(clip_embedding(self.target_encoder, v2, lengths))
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def update_target(self, momentum: float) -> None:
        """EMA step of the target networks."""
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_projector, self.projector, momentum)
