"""What is trained: the tasks (fine-tuning and the LiRA/BYOL/DINO pretext tasks), each with its
network, loss, validation and product, plus the run folder's names and batch helpers.

Split from training/loop.py (the worker loop and the driver stay there)."""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.model.checkpoint import (
    checkpoint_from_model,
    preprocessing_from_config,
    read_weights_file,
)
from pipeline.model.encoder_weights import encoder_checkpoint, load_encoder_weights
from pipeline.model.registry import build_encoder, build_model
from pipeline.storage import join
from schemas.config import VaerrConfig
from training.augment import augment_clips, make_view
from training.datasets.shards import read_frames
from training.evaluate import score_sequences, validation_metrics
from training.losses import ccc_loss, composite_loss, kmeans_bin_centres
from training.pretext.byol import ByolModel, ema_momentum
from training.pretext.dino import DinoModel
from training.pretext.lira import LiraModel, lira_loss, shift_targets

log = logging.getLogger(__name__)


STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


def run_dir(cfg: VaerrConfig) -> str:
    """storage_path/name: where a run's files and checkpoints live."""
    return join(cfg.train.storage_path, cfg.train.name)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def batch_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Numpy batch -> tensors on `device`, except `crops` (uint8 [B, T, S, S]), which stay on
    the CPU: the per-clip augmentations run there, then the tasks move them."""
    out = {}
    for k, v in batch.items():
        arr = np.asarray(v)
        if arr.dtype == object:
            continue
        t = torch.from_numpy(np.ascontiguousarray(arr))
        out[k] = t if k == "crops" else t.to(device)
    return out


# ---------------------------------------------------------------------------------------------
# Tasks: what is trained, its loss, validation and product


@dataclass(frozen=True)
class TaskExtras:
    """What the driver computes once for a task and hands every worker (picklable).

    val_sequences: sequence dicts (`read_sequences`) validated on rank 0. audio_dim: width of
    the per-frame audio target (tasks that need audio; 0 otherwise). bin_centres: [2, bins]
    k-means centres of the CE head (fine-tuning with model.bin_edges=kmeans; else None).
    steps_per_epoch: optimiser steps an epoch is expected to take (progress of EMA schedules).
    all_sum: set on each worker: sums a tensor across ranks (None on one worker).
    training_data: what the training sequences are (`shards.training_data`: "synthetic", a
    dataset name, None when unknown), written into the fine-tuned checkpoint's provenance.
    """

    val_sequences: list[dict[str, Any]] = field(default_factory=list)
    audio_dim: int = 0
    bin_centres: list[list[float]] | None = None
    steps_per_epoch: int = 1
    all_sum: Callable[..., Any] | None = None
    training_data: str | None = None


def _audio_dim(cfg: VaerrConfig, train_seqs: list[dict[str, Any]]) -> int:
    """Width of the audio target, read from the first training sequence with audio."""
    s = next(s for s in train_seqs if s["has_audio"])
    fr = read_frames(s["shard_uri"], s["track_id"], s["first_frame"], 1, cfg.storage, True)
    return int(fr["audio_feat"].shape[1])


class Task(ABC):
    """One kind of training. `extras` carries what the driver computed for it (`prepare`)."""

    name: str = ""
    needs_audio = False
    labelled_only = False

    def __init__(self, cfg: VaerrConfig, extras: TaskExtras) -> None:
        self.cfg = cfg
        self.extras = extras

    @classmethod
    def prepare(
        cls, cfg: VaerrConfig, train_seqs: list[dict[str, Any]], extras: TaskExtras
    ) -> TaskExtras:
        """Driver side, once per run: `extras` completed with what this task needs from the
        training sequences (the audio width for tasks that need audio)."""
        if cls.needs_audio:
            return dataclasses.replace(extras, audio_dim=_audio_dim(cfg, train_seqs))
        return extras

    @staticmethod
    def export_uri(cfg: VaerrConfig) -> str | None:
        """Where the run's product is also copied to (None: it stays under RUN only)."""
        return None

    @abstractmethod
    def build(self) -> nn.Module:
        """The module to optimise (randomly initialised or from a pretext checkpoint)."""

    @abstractmethod
    def loss(
        self, module: nn.Module, batch: dict[str, Tensor], gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """One batch (clips uint8 [B, T, S, S], length [B], labels / audio) -> (loss, parts)."""

    def after_step(self, module: nn.Module, progress: float) -> None:  # noqa: B027
        """Called after each optimiser step (EMA targets); progress in [0, 1]."""

    def validate(self, module: nn.Module) -> dict[str, float]:
        """Rank 0, end of epoch: validation metrics ({} when there is nothing to validate)."""
        return {}

    def score(self, metrics: dict[str, float]) -> float | None:
        """Higher is better; None: no validation (the last epoch is kept)."""
        return None

    @abstractmethod
    def product(self, module: nn.Module, epoch: int, metrics: dict[str, float]) -> Any:
        """What the run delivers for this state: a Checkpoint or an encoder-checkpoint dict."""

    @property
    def product_name(self) -> str:
        """File name of the product under RUN."""
        return "best.pt"


class FinetuneTask(Task):
    """SS-VAERR fine-tuning: composite loss on labelled clips, whole-sequence validation."""

    name = "finetune"
    labelled_only = True

    @classmethod
    def prepare(
        cls, cfg: VaerrConfig, train_seqs: list[dict[str, Any]], extras: TaskExtras
    ) -> TaskExtras:
        """With model.bin_edges=kmeans: the CE bin centres from all training labels."""
        extras = super().prepare(cfg, train_seqs, extras)
        if cfg.model.bin_edges != "kmeans":
            return extras
        labels: dict[str, list[np.ndarray]] = {"arousal": [], "valence": []}
        for s in train_seqs:
            fr = read_frames(
                s["shard_uri"], s["track_id"], s["first_frame"], s["n_frames"], cfg.storage
            )
            for k in labels:
                labels[k].append(fr[k])
        centres = np.stack(
            [kmeans_bin_centres(np.concatenate(labels[k]), cfg.model.bins) for k in labels]
        ).tolist()
        return dataclasses.replace(extras, bin_centres=centres)

    def build(self) -> nn.Module:
        cfg = self.cfg
        model = build_model(cfg.model)
        model.set_frozen_batchnorm(cfg.train.frozen_batchnorm)
        if self.extras.bin_centres is not None:
            model.set_bin_centres(np.asarray(self.extras.bin_centres, np.float32))
        if cfg.model.encoder_checkpoint:
            uri = cfg.model.encoder_checkpoint
            state = read_weights_file(uri, cfg.storage)
            report = load_encoder_weights(model, state)
            if not report.complete:
                raise ValueError(f"{uri}: encoder weights incomplete\n{report}")
        return model

    def loss(
        self, module: nn.Module, batch: dict[str, Tensor], gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        dev = batch["length"].device
        x = augment_clips(batch["crops"], self.cfg.augment, gen, batch["length"].cpu())
        out = module(x.to(dev, non_blocking=True), batch["length"])
        targets = {"arousal": batch["arousal"], "valence": batch["valence"]}
        valid = torch.isfinite(batch["arousal"]) & torch.isfinite(batch["valence"])
        if out.mask is not None:
            valid = valid & out.mask
        all_sum = self.extras.all_sum  # several workers: CCC on the global batch
        if not bool(valid.any()):  # keep every DDP rank's step: a zero loss on the graph
            zero = (out.arousal.sum() + out.valence.sum()) * 0.0
            if all_sum is not None:  # still join the CCC all-reduce of the other ranks
                for k in targets:
                    if getattr(self.cfg.loss, k).w_ccc:
                        zero = zero + ccc_loss(getattr(out, k), targets[k], valid, all_sum) * 0
            return zero, {}
        model = unwrap(module)
        params = [p for p in model.parameters() if p.requires_grad] if self.cfg.loss.l2 else None
        total, parts = composite_loss(
            out, targets, self.cfg.loss, model.bin_centres, valid, params, all_sum=all_sum
        )
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def validate(self, module: nn.Module) -> dict[str, float]:
        seqs = self.extras.val_sequences
        if not seqs:
            return {}
        scored = score_sequences(unwrap(module), seqs, self.cfg, ("sequence",))
        return validation_metrics(scored) if scored else {}

    def score(self, metrics: dict[str, float]) -> float | None:
        v = metrics.get("val/ccc_mean")
        return None if v is None or not math.isfinite(v) else float(v)

    def product(self, module: nn.Module, epoch: int, metrics: dict[str, float]) -> Any:
        cfg = self.cfg
        prov = {
            "by": "vaerr finetune",
            "data": f"{cfg.data.dataset}:{cfg.data.shards}",
            "splits": list(cfg.train.train_splits),
            "epochs": epoch + 1,
            "seed": cfg.train.seed,
            "run": cfg.train.name,
            "encoder_checkpoint": cfg.model.encoder_checkpoint,
            "finetune": cfg.model.finetune,
            "training_data": self.extras.training_data,
            "metrics": {k: float(v) for k, v in metrics.items()},
        }
        return checkpoint_from_model(
            unwrap(module), cfg.model, preprocessing_from_config(cfg), prov, untrained=False
        )


class _PretextTask(Task):
    method = ""

    @staticmethod
    def export_uri(cfg: VaerrConfig) -> str | None:
        """pretrain.output, when set: the encoder is also copied there."""
        return cfg.pretrain.output or None

    def encoder_of(self, module: nn.Module) -> nn.Module:
        return unwrap(module).encoder

    def product(self, module: nn.Module, epoch: int, metrics: dict[str, float]) -> Any:
        cfg = self.cfg
        prov = {
            "data": f"{cfg.data.dataset}:{cfg.data.shards}",
            "epochs": epoch + 1,
            "seed": cfg.train.seed,
            "run": cfg.train.name,
            "metrics": {k: float(v) for k, v in metrics.items()},
        }
        return encoder_checkpoint(self.encoder_of(module), cfg.model, self.method, prov)

    @property
    def product_name(self) -> str:
        return "encoder.pt"


class LiraTask(_PretextTask):
    """LiRA: L1 between predicted and true per-frame audio features."""

    name = method = "lira"
    needs_audio = True

    def build(self) -> nn.Module:
        return LiraModel(
            build_encoder(self.cfg.model), self.extras.audio_dim, self.cfg.pretrain.lira
        )

    def loss(
        self, module: nn.Module, batch: dict[str, Tensor], gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        x, lengths, target = batch["crops"], batch["length"], batch["audio_feat"]
        dev = lengths.device
        if self.cfg.pretrain.lira.control == "shift":
            target = shift_targets(target.cpu(), lengths.cpu(), gen).to(dev)
        x = augment_clips(x, self.cfg.augment, gen, lengths.cpu()).to(dev, non_blocking=True)
        pred = module(x, lengths)
        mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]
        loss = lira_loss(pred, target, mask)
        return loss, {"l1": float(loss.detach())}

    def validate(self, module: nn.Module) -> dict[str, float]:
        seqs = [s for s in self.extras.val_sequences if s["has_audio"]]
        if not seqs:
            return {}
        model = unwrap(module)
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        clip = self.cfg.train.clip_frames_at(self.cfg.video.fps)
        total, n = 0.0, 0
        with torch.inference_mode():
            for s in seqs:
                fr = read_frames(
                    s["shard_uri"],
                    s["track_id"],
                    s["first_frame"],
                    s["n_frames"],
                    self.cfg.storage,
                    True,
                    self.cfg.model.crop_size,
                )
                if "audio_feat" not in fr:
                    continue
                # consecutive training-length clips: what the model was trained to see
                for a in range(0, len(fr["crops"]), clip):
                    x = torch.from_numpy(fr["crops"][a : a + clip])[None].to(device)
                    y = torch.from_numpy(fr["audio_feat"][a : a + clip])
                    err = (model(x)[0].float().cpu() - y).abs().mean()
                    total += float(err) * len(y)
                    n += len(y)
        model.train(was)
        return {"val/l1": total / n} if n else {}

    def score(self, metrics: dict[str, float]) -> float | None:
        return -metrics["val/l1"] if "val/l1" in metrics else None


class ByolTask(_PretextTask):
    """Video-BYOL: two views per clip, EMA target."""

    name = method = "byol"

    def build(self) -> nn.Module:
        c = self.cfg.pretrain.byol
        return ByolModel(build_encoder(self.cfg.model), c.proj_dim, c.hidden_dim)

    def loss(
        self, module: nn.Module, batch: dict[str, Tensor], gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.pretrain.byol
        x, dev = batch["crops"], batch["length"].device
        v1 = make_view(x, c.view1, gen).to(dev)
        v2 = make_view(x, c.view2, gen).to(dev)
        loss = module(v1, v2, batch["length"])
        return loss, {"byol": float(loss.detach())}

    def after_step(self, module: nn.Module, progress: float) -> None:
        unwrap(module).update_target(ema_momentum(self.cfg.pretrain.byol.ema, progress))


class DinoTask(_PretextTask):
    """DINO: 2 global + k local views per clip, EMA teacher, centring."""

    name = method = "dino"

    def build(self) -> nn.Module:
        c = self.cfg.pretrain.dino
        return DinoModel(
            build_encoder(self.cfg.model),
            c.out_dim,
            c.hidden_dim,
            c.bottleneck_dim,
            c.teacher_temp,
            c.student_temp,
            c.center_momentum,
        )

    def loss(
        self, module: nn.Module, batch: dict[str, Tensor], gen: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg.pretrain.dino
        x, dev = batch["crops"], batch["length"].device
        globals_ = [make_view(x, c.global_view, gen).to(dev) for _ in range(2)]
        locals_ = [make_view(x, c.local_view, gen).to(dev) for _ in range(c.local_crops)]
        loss = module(globals_, locals_, batch["length"])
        return loss, {"dino": float(loss.detach())}

    def after_step(self, module: nn.Module, progress: float) -> None:
        unwrap(module).update_teacher(ema_momentum(self.cfg.pretrain.dino.ema, progress))

    def encoder_of(self, module: nn.Module) -> nn.Module:
        return unwrap(module).export_encoder


TASKS: dict[str, type[Task]] = {
    "finetune": FinetuneTask,
    "lira": LiraTask,
    "byol": ByolTask,
    "dino": DinoTask,
}


def resolve_task(name: str, cfg: VaerrConfig) -> str:
    """The TASKS key a run of `name` trains: `"pretrain"` means cfg.pretrain.method; an
    unknown name raises ValueError naming the choices."""
    if name == "pretrain":
        name = cfg.pretrain.method
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; one of {sorted(TASKS)}")
    return name
