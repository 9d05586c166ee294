"""Encoder weights in and out of checkpoints: export of a pretext-trained encoder (front-end +
ResNet trunk) as an encoder checkpoint, and import of encoder tensors from a pretext, SS-VAERR
or the authors' checkpoint into a network, reporting every tensor not loaded.

Encoder checkpoint layout (what `vaerr pretrain` writes and `finetune` loads):
  format "vaerr.pretext", version 1, method str (lira, byol, dino), arch str, model_config dict,
  state_dict {"encoder.<name>": tensor}, provenance dict.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from pipeline.model.checkpoint import (
    Checkpoint,
    plain_values,
    provenance_record,
    stored_config,
)
from schemas.model import ModelConfig

log = logging.getLogger(__name__)

__all__ = ["PRETEXT_FORMAT", "EncoderLoadReport", "encoder_checkpoint", "load_encoder_weights"]

PRETEXT_FORMAT = "vaerr.pretext"


def encoder_checkpoint(
    encoder: nn.Module, model_cfg: ModelConfig, method: str, provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """The encoder's weights as a plain dict `load_encoder_weights` reads (tensors named
    `encoder.<name>` under `state_dict`), with the architecture and provenance (`provenance` plus
    `by`, created, versions). Save it with `save_checkpoint`."""
    state = {f"encoder.{k}": v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return plain_values(
        {
            "format": PRETEXT_FORMAT,
            "version": 1,
            "method": method,
            "arch": model_cfg.arch,
            "model_config": stored_config(model_cfg),
            "state_dict": state,
            "provenance": provenance_record(by=f"vaerr pretrain ({method})", **provenance),
        },
        "encoder checkpoint",
    )


@dataclass
class EncoderLoadReport:
    """What load_encoder_weights did, by encoder parameter name (e.g. `frontend.conv.weight`).

    prefix: what was stripped from the checkpoint's names (e.g. `encoder.`); loaded: names
    copied; skipped: encoder names not loaded -> reason; unused: checkpoint names ignored.
    """

    prefix: str
    loaded: list[str]
    skipped: dict[str, str]
    unused: list[str]

    @property
    def complete(self) -> bool:
        """True when every encoder tensor was loaded."""
        return not self.skipped

    def __str__(self) -> str:
        lines = [
            f"encoder weights: loaded {len(self.loaded)}, skipped {len(self.skipped)}, "
            f"unused checkpoint tensors {len(self.unused)} (prefix {self.prefix!r})"
        ]
        lines += [f"  skipped {k}: {why}" for k, why in sorted(self.skipped.items())]
        return "\n".join(lines)


def _detect_prefix(ckpt_keys: list[str], enc_keys: list[str]) -> str:
    enc = set(enc_keys)
    votes: Counter[str] = Counter()
    for ck in ckpt_keys:
        for ek in enc:
            if ck.endswith(ek) and (len(ck) == len(ek) or ck[-len(ek) - 1] == "."):
                votes[ck[: len(ck) - len(ek)]] += 1
    if not votes:
        return ""
    best = max(votes.values())
    return min((p for p, n in votes.items() if n == best), key=len)


def load_encoder_weights(
    model: nn.Module, state: Mapping[str, Any] | Checkpoint, prefix: str | None = None
) -> EncoderLoadReport:
    """Copy encoder (front-end + trunk) tensors from a pretext or SS-VAERR checkpoint.

    model: an SSVAERR (its `.encoder` is filled) or an Encoder. state: a state dict, a dict
    holding one under "state_dict", or a Checkpoint; names in the authors' public code
    (`frontend3D.*`, `trunk.*.relu1`, ...; pipeline.model.authors) are renamed first.
    Tensors match by name after stripping `prefix` (None: detected, e.g. "encoder." or
    "module.online.encoder.") and by shape; everything else is reported, never silently
    dropped. Raises ValueError when nothing matched at all (wrong file).
    """
    encoder = getattr(model, "encoder", model)
    if isinstance(state, Checkpoint):
        state = state.state_dict
    from pipeline.model.authors import is_authors_naming, rename_authors_state

    if is_authors_naming(state):  # the authors' public code (frontend3D.*, relu1/2, ...)
        state = rename_authors_state(state).state
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    src = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    target = encoder.state_dict()
    if prefix is None:
        prefix = _detect_prefix(list(src), list(target))
    loaded: list[str] = []
    skipped: dict[str, str] = {}
    used: set[str] = set()
    subset: dict[str, Tensor] = {}
    for name, dest in target.items():
        key = prefix + name
        if key not in src:
            skipped[name] = f"absent from checkpoint (looked for {key!r})"
            continue
        used.add(key)
        if tuple(src[key].shape) != tuple(dest.shape):
            skipped[name] = (
                f"shape mismatch: checkpoint {tuple(src[key].shape)} vs model {tuple(dest.shape)}"
            )
            continue
        subset[name] = src[key]
        loaded.append(name)
    if not loaded:
        raise ValueError(
            f"no encoder tensor matched (prefix {prefix!r}); checkpoint names start "
            f"{sorted(src)[:5]}, encoder names {list(target)[:5]}"
        )
    encoder.load_state_dict(subset, strict=False)
    unused = sorted(set(src) - used)
    report = EncoderLoadReport(prefix, loaded, skipped, unused)
    log.info("%s", report)
    return report
