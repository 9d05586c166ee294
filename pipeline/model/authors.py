"""Weights in the naming of the authors' public code (github Instassa/VAERR_SelfSupervisedVE,
`model/modelVideoClassReg.py` `EmotionModelVideo`, `model/resnet.py`, `model/gru.py`), read
as our SS-VAERR: as an encoder (front-end + ResNet trunk) or, where the heads match, as a
whole model.

Their module tree (from the stored source) and ours:

| theirs                                   | ours                                     |
|------------------------------------------|------------------------------------------|
| frontend3D.0 (Conv3d 1->64, 5x7x7)       | encoder.frontend.conv                    |
| frontend3D.1 (BatchNorm3d)               | encoder.frontend.bn                      |
| frontend3D.2 (ReLU, or PReLU: .weight)   | encoder.frontend.act                     |
| frontend3D.3 (MaxPool3d)                 | encoder.frontend.pool (no tensors)       |
| trunk.layerN.M.{conv1,bn1,conv2,bn2}     | encoder.trunk.layerN.M.{same}            |
| trunk.layerN.M.relu1 / relu2 (PReLU)     | encoder.trunk.layerN.M.act1 / act2       |
| trunk.layerN.M.downsample.{0,1}          | encoder.trunk.layerN.M.downsample.{0,1}  |
| trunk.layerN.M.downsample.{1,2} (their   | same conv / BN (their AvgPool2d at .0    |
|   avg_pool_downsample variant)           |   has no tensors; our block has no pool) |
| gru.gru.{weight,bias}_{ih,hh}_l{k}[...]  | gru.{same}                               |
| gru.fc (Linear 512 -> 2 * (bins + 1))    | head (same output order: arousal bins,   |
|                                          |   arousal value, valence bins, valence   |
|                                          |   value; value = 2 sigmoid - 1)          |
| gru2.* (built, never used in forward)    | - (reported unused)                      |
| trunk.fc / avgpool                       | - (no tensors / unused)                  |

Their checkpoints hold the state dict under "model_state_dict", "state_dict", "netG"
(LiRA pretext) or "student" (DINO), possibly with a "module." (DataParallel) or
"module.backbone." (DINO) prefix: all are accepted. Note: the avg-pool downsample variant
computes a different function than our strided 1x1 conv, so it loads shape-compatibly but is
reported (`variant`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

log = logging.getLogger(__name__)

CONTAINERS = ("model_state_dict", "state_dict", "netG", "student", "teacher", "model")
_MARKERS = ("frontend3D.0.weight",)


def _tensors(obj: Any) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint object (tries the authors' container keys)."""
    if isinstance(obj, Mapping):
        if any(isinstance(v, Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        for key in CONTAINERS:
            if isinstance(obj.get(key), Mapping):
                return _tensors(obj[key])
    raise ValueError(f"no state dict found (looked for tensors and keys {CONTAINERS})")


def authors_prefix(keys: list[str]) -> str | None:
    """The prefix before `frontend3D.0.weight` (e.g. '', 'module.', 'module.backbone.'),
    or None when the names are not the authors'."""
    for k in keys:
        for m in _MARKERS:
            if k.endswith(m) and (len(k) == len(m) or k[-len(m) - 1] == "."):
                return k[: len(k) - len(m)]
    return None


def is_authors_naming(state: Any) -> bool:
    """True when `state` (a checkpoint object or state dict) uses the authors' names."""
    try:
        return authors_prefix(list(_tensors(state))) is not None
    except ValueError:
        return False


@dataclass
class AuthorsMapping:
    """Result of renaming: our names -> tensors; their names we had no place for; notes."""

    state: dict[str, Tensor]
    unused: list[str] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)


_FRONT = {"0": "conv", "1": "bn", "2": "act"}
_BLOCK = re.compile(r"^trunk\.(layer[1-4])\.(\d+)\.(.+)$")


def rename_authors_state(state: Any) -> AuthorsMapping:
    """The authors' names -> ours (the table in this module's docstring)."""
    src = _tensors(state)
    prefix = authors_prefix(list(src))
    if prefix is None:
        raise ValueError("not the authors' naming: no frontend3D.0.weight")
    ours: dict[str, Tensor] = {}
    unused: list[str] = []
    variant: list[str] = []
    avgpool_ds = any(re.search(r"downsample\.2\.weight$", k) for k in src)
    if avgpool_ds:
        variant.append(
            "avg_pool_downsample: their shortcut is AvgPool2d + 1x1 conv, ours a strided 1x1 "
            "conv; weights load, the function differs"
        )
    for full, t in src.items():
        if not full.startswith(prefix):
            unused.append(full)
            continue
        k = full[len(prefix) :]
        parts = k.split(".")
        if parts[0] == "frontend3D" and len(parts) == 3 and parts[1] in _FRONT:
            ours[f"encoder.frontend.{_FRONT[parts[1]]}.{parts[2]}"] = t
            continue
        m = _BLOCK.match(k)
        if m:
            layer, idx, rest = m.groups()
            rest = re.sub(r"^relu([12])\.", r"act\1.", rest)
            if avgpool_ds and rest.startswith("downsample."):
                i, tail = rest.split(".", 2)[1:]
                if i == "0":  # the AvgPool2d: no tensors; anything else is unexpected
                    unused.append(full)
                    continue
                rest = f"downsample.{int(i) - 1}.{tail}"
            ours[f"encoder.trunk.{layer}.{idx}.{rest}"] = t
            continue
        if parts[0] == "gru" and len(parts) >= 3 and parts[1] == "gru":
            ours["gru." + ".".join(parts[2:])] = t
            continue
        if parts[0] == "gru" and len(parts) == 3 and parts[1] == "fc":
            ours[f"head.{parts[2]}"] = t
            continue
        unused.append(full)  # gru2.*, trunk.fc, anything else
    return AuthorsMapping(ours, sorted(unused), variant)


@dataclass
class AuthorsLoadReport:
    """What load_authors_model did: loaded names, missing ones, shape mismatches, unused."""

    loaded: list[str]
    missing: list[str]
    mismatched: dict[str, str]
    unused: list[str]
    variant: list[str]

    @property
    def complete(self) -> bool:
        """Every tensor of our model came from the file."""
        return not self.missing and not self.mismatched

    def __str__(self) -> str:
        lines = [
            f"authors' weights: loaded {len(self.loaded)}, missing {len(self.missing)}, "
            f"shape mismatches {len(self.mismatched)}, unused {len(self.unused)}"
        ]
        lines += [f"  mismatch {k}: {v}" for k, v in sorted(self.mismatched.items())]
        lines += [f"  missing {k}" for k in self.missing[:10]]
        lines += [f"  note: {v}" for v in self.variant]
        return "\n".join(lines)


def load_authors_model(model: nn.Module, state: Any, strict: bool = True) -> AuthorsLoadReport:
    """A whole SS-VAERR (encoder, GRU, head) from a checkpoint in the authors' naming.

    strict: raise ValueError unless every tensor of `model` loads with its shape (e.g. a
    head trained with another number of bins does not match: load the encoder only with
    `load_encoder_weights`, which accepts the authors' naming too).
    """
    mapping = rename_authors_state(state)
    target = model.state_dict()
    loaded, missing, mismatched = [], [], {}
    subset = {}
    for name, dest in target.items():
        t = mapping.state.get(name)
        if t is None:
            # ours only (bin centres: the uniform default = theirs); BN counters optional
            if name != "bin_centres" and not name.endswith("num_batches_tracked"):
                missing.append(name)
            continue
        if tuple(t.shape) != tuple(dest.shape):
            mismatched[name] = f"file {tuple(t.shape)} vs model {tuple(dest.shape)}"
            continue
        subset[name] = t
        loaded.append(name)
    unused = sorted(set(mapping.unused) | (set(mapping.state) - set(target)))
    report = AuthorsLoadReport(loaded, missing, mismatched, unused, mapping.variant)
    if strict and not report.complete:
        raise ValueError(f"the authors' checkpoint does not fit this model as a whole:\n{report}")
    model.load_state_dict(subset, strict=False)
    log.info("%s", report)
    return report


def checkpoint_from_authors(state: Any, model_cfg: Any, source: str = "") -> Any:
    """A vaerr Checkpoint (what `vaerr infer` loads) from a whole model in the authors'
    naming: build model_cfg's network, load strictly (heads must match), snapshot."""
    from pipeline.model.checkpoint import checkpoint_from_model
    from pipeline.model.registry import build_model

    model = build_model(model_cfg)
    load_authors_model(model, state, strict=True)
    prov = {"by": "authors' code (Instassa/VAERR_SelfSupervisedVE), renamed", "source": source}
    return checkpoint_from_model(model, model_cfg, provenance=prov, untrained=False)
