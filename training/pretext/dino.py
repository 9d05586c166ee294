"""DINO (Caron et al. 2021) with the SS-VAERR encoder: a student sees global and local crops
of a clip, an EMA teacher sees the global ones; the teacher's outputs are centred (running
mean) and sharpened (low temperature); cross-entropy from every teacher view to every other
student view. Clip embedding = mean per-frame feature (as BYOL).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.network import Encoder
from training.pretext.byol import clip_embedding, ema_update


class DinoHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck), L2 normalise, weight-normalised linear
    layer to `out_dim` prototypes (no bias)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, bottleneck: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, in] -> logits [B, out_dim]."""
        return self.last(F.normalize(self.mlp(x), dim=-1))


def dino_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    center: Tensor,
    teacher_temp: float,
    student_temp: float,
) -> Tensor:
    """Mean over (teacher view i, student view j != i) of
    -sum softmax((t_i - center) / tt) * log_softmax(s_j / ts); teacher detached.

    student: V logits [B, K] (global views first), teacher: G logits [B, K]."""
    t_prob = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    s_logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, n = 0.0, 0
    for i, tp in enumerate(t_prob):
        for j, sl in enumerate(s_logp):
            if i == j:
                continue
            total = total + (-(tp * sl).sum(-1)).mean()
            n += 1
    return total / max(n, 1)


class DinoModel(nn.Module):
    """forward(global_views, local_views, lengths) -> DINO loss (and updates the centre).
    After training, the teacher encoder is the one to keep (`export_encoder`)."""

    def __init__(
        self,
        encoder: Encoder,
        out_dim: int = 4096,
        hidden: int = 1024,
        bottleneck: int = 256,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = DinoHead(encoder.out_dim, out_dim, hidden, bottleneck)
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.head)
        for p in list(self.teacher_encoder.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.tt, self.ts, self.cm = teacher_temp, student_temp, center_momentum

    def forward(
        self, global_views: list[Tensor], local_views: list[Tensor], lengths: Tensor | None
    ) -> Tensor:
        """Views uint8 [B, T, s, s] each; lengths [B]."""
        student = [
            self.head(clip_embedding(self.encoder, v, lengths)) for v in global_views + local_views
        ]
        with torch.no_grad():
            teacher = [
                self.teacher_head(clip_embedding(self.teacher_encoder, v, lengths))
                for v in global_views
            ]
        loss = dino_loss(student, teacher, self.center, self.tt, self.ts)
        self._update_center(torch.cat(teacher))
        return loss

    @torch.no_grad()
    def _update_center(self, teacher: Tensor) -> None:
        mean = teacher.float().mean(0, keepdim=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
            mean /= torch.distributed.get_world_size()
        self.center.mul_(self.cm).add_(mean, alpha=1 - self.cm)

    def update_teacher(self, momentum: float) -> None:
        """EMA step of the teacher."""
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)

    @property
    def export_encoder(self) -> Encoder:
        """The encoder DINO hands to fine-tuning: the teacher (as in DINO)."""
        return self.teacher_encoder
