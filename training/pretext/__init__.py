"""Pretext (self-supervised) tasks that train the encoder (front-end + ResNet trunk) without
labels: LiRA (predict the clip's audio features from the face), Video-BYOL and DINO. Each
module holds its network wrapper and its loss as importable functions; the training loop
(training.loop) runs them, and `encoder_checkpoint` writes what `finetune` loads."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.model.checkpoint import _plain, _provenance, _stored_config, save_checkpoint
from schemas.model import ModelConfig

PRETEXT_FORMAT = "vaerr.pretext"


def encoder_checkpoint(
    encoder: nn.Module, model_cfg: ModelConfig, method: str, provenance: dict[str, Any]
) -> dict[str, Any]:
    """The encoder's weights as a plain dict `pipeline.model.load_encoder_weights` reads
    (tensors named `encoder.<name>` under `state_dict`), with the architecture and provenance."""
    state = {f"encoder.{k}": v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return _plain(
        {
            "format": PRETEXT_FORMAT,
            "version": 1,
            "method": method,
            "arch": model_cfg.arch,
            "model_config": _stored_config(model_cfg),
            "state_dict": state,
            "provenance": _provenance(by=f"vaerr pretrain ({method})", **provenance),
        },
        "encoder checkpoint",
    )


def save_encoder_checkpoint(obj: dict[str, Any], uri: str, storage_options: dict | None) -> str:
    """Write an encoder checkpoint to a path or fsspec URI."""
    return save_checkpoint(obj, uri, storage_options)
