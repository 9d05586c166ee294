"""The explicit architecture registry (`ssvaerr_r18`, `ssvaerr_tiny`) and fine-tuning modes.

A preset fixes the topology's sizes; any ModelConfig size field that is not None overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from pipeline.model.network import SSVAERR, Encoder
from schemas.model import ModelConfig

__all__ = [
    "ARCHS",
    "FINETUNE_MODES",
    "ArchSpec",
    "apply_finetune_mode",
    "arch_spec",
    "build_encoder",
    "build_model",
    "list_models",
]


@dataclass(frozen=True)
class ArchSpec:
    """Sizes of one SS-VAERR variant (the topology itself never changes)."""

    frontend_channels: int
    widths: tuple[int, int, int, int]
    blocks: tuple[int, int, int, int]
    gru_hidden: int
    gru_layers: int
    description: str


ARCHS: dict[str, ArchSpec] = {
    "ssvaerr_r18": ArchSpec(
        frontend_channels=64,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        gru_hidden=256,
        gru_layers=2,
        description="The paper's network: Conv3d-64 + ResNet-18 (512-d) + BiGRU 256x2.",
    ),
    "ssvaerr_tiny": ArchSpec(
        frontend_channels=8,
        widths=(8, 16, 32, 64),
        blocks=(2, 2, 2, 2),
        gru_hidden=32,
        gru_layers=2,
        description="Same topology, 1/8 width: CPU tests and the demo (not for real use).",
    ),
}

FINETUNE_MODES = ("full", "frozen_frontend", "frozen_encoder")


def list_models() -> list[str]:
    """Registered architecture names."""
    return sorted(ARCHS)


def _as_config(name_or_cfg: str | ModelConfig) -> ModelConfig:
    if isinstance(name_or_cfg, ModelConfig):
        return name_or_cfg
    return ModelConfig(arch=name_or_cfg)


def arch_spec(name_or_cfg: str | ModelConfig) -> ArchSpec:
    """The preset of the config's arch with the config's non-None size overrides applied."""
    cfg = _as_config(name_or_cfg)
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown model arch {cfg.arch!r}; registered: {', '.join(list_models())}")
    spec = ARCHS[cfg.arch]
    overrides = {
        k: getattr(cfg, k)
        for k in ("frontend_channels", "widths", "blocks", "gru_hidden", "gru_layers")
        if getattr(cfg, k) is not None
    }
    return replace(spec, **overrides)


def build_encoder(name_or_cfg: str | ModelConfig) -> Encoder:
    """The encoder (front-end + trunk) alone, randomly initialised: what pretext tasks train."""
    cfg = _as_config(name_or_cfg)
    spec = arch_spec(cfg)
    return Encoder(
        frontend_channels=spec.frontend_channels,
        widths=spec.widths,
        blocks=spec.blocks,
        activation=cfg.activation,
        mean=cfg.mean,
        std=cfg.std,
    )


def build_model(name_or_cfg: str | ModelConfig) -> SSVAERR:
    """A randomly initialised SS-VAERR on CPU (train mode, fine-tune mode from the config).

    Weights load separately (pipeline.model.checkpoint); the config's device is not applied.
    """
    cfg = _as_config(name_or_cfg)
    spec = arch_spec(cfg)
    model = SSVAERR(
        build_encoder(cfg),
        bins=cfg.bins,
        gru_hidden=spec.gru_hidden,
        gru_layers=spec.gru_layers,
        arch=cfg.arch,
    )
    if cfg.finetune != "full":
        apply_finetune_mode(model, cfg.finetune)
    return model


def apply_finetune_mode(model: SSVAERR, mode: str) -> SSVAERR:
    """Set what trains: `full` (everything), `frozen_frontend` (the Conv3d stem frozen),
    `frozen_encoder` (front-end + trunk frozen; only GRU + head train).

    Frozen parts get requires_grad=False and stay in eval mode (batch-norm running statistics
    fixed) even across later `model.train()` calls. Returns the model.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune mode must be one of {FINETUNE_MODES}, got {mode!r}")
    frozen: tuple[nn.Module, ...] = ()
    if mode == "frozen_frontend":
        frozen = (model.encoder.frontend,)
    elif mode == "frozen_encoder":
        frozen = (model.encoder,)
    model.freeze(frozen, mode)
    return model
