"""SS-VAERR checkpoints: one torch file of tensors and plain Python values, read and written
through any fsspec URI, always loaded with `torch.load(weights_only=True)`.

Layout of the saved dict (format version 1):
  format "vaerr.ssvaerr", version 1, arch str, model_config dict (resolved sizes, JSON types),
  state_dict {name: tensor}, bin_centres tensor [2, bins] (arousal, valence),
  preprocessing {fps, crop_size, mean, std, grayscale, landmarks, crop_scale},
  provenance {created, by, data, epochs, seed, git_sha, vaerr_version, torch_version, ...},
  untrained bool.

Named checkpoints live in a team's registry YAML (`name: {uri: ..., sha256: ...}`), resolved
through the weights cache with the checksum checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from pipeline.device import resolve_device
from pipeline.model.network import SSVAERR
from pipeline.model.registry import arch_spec, build_model
from schemas.model import ModelConfig
from schemas.yamlsafe import load_yaml

if TYPE_CHECKING:
    from schemas.config import VaerrConfig

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "EncoderLoadReport",
    "checkpoint_from_model",
    "default_preprocessing",
    "init_checkpoint",
    "load_checkpoint",
    "load_encoder_weights",
    "load_model",
    "model_id",
    "parameter_count",
    "preprocessing_from_config",
    "read_registry",
    "read_weights_file",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "vaerr.ssvaerr"
FORMAT_VERSION = 1
# ModelConfig fields that define the network (and so travel with the weights); runtime fields
# (device, dtype, checkpoint, registry_file, finetune...) come from the loading run instead.
ARCH_FIELDS = (
    "arch",
    "bins",
    "frontend_channels",
    "widths",
    "blocks",
    "gru_hidden",
    "gru_layers",
    "activation",
    "mean",
    "std",
    "crop_size",
    "bin_edges",
)
REGISTRY_ENV = "VAERR_MODEL_REGISTRY"


# ---------------------------------------------------------------------------------------------
# The checkpoint object


@dataclass
class Checkpoint:
    """An SS-VAERR checkpoint in memory (see the module docstring for the saved layout)."""

    arch: str
    model_config: dict[str, Any]
    state_dict: dict[str, Tensor]
    bin_centres: Tensor
    preprocessing: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The plain dict that is saved (tensors, str, numbers, bools, None, lists, dicts)."""
        return {
            "format": FORMAT,
            "version": self.version,
            "arch": self.arch,
            "model_config": dict(self.model_config),
            "state_dict": dict(self.state_dict),
            "bin_centres": self.bin_centres,
            "preprocessing": dict(self.preprocessing),
            "provenance": dict(self.provenance),
            "untrained": bool(self.untrained),
        }

    @classmethod
    def from_dict(cls, obj: Any, source: str = "checkpoint") -> Checkpoint:
        """Validate a loaded dict; errors say what is wrong with `source`."""
        if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
            hint = ""
            if (
                isinstance(obj, Mapping)
                and obj
                and all(isinstance(v, Tensor) for v in obj.values())
            ):
                hint = " (it looks like a bare state dict: use load_encoder_weights for those)"
            raise ValueError(f"{source} is not a vaerr SS-VAERR checkpoint{hint}")
        version = int(obj.get("version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source} has checkpoint format version {version}; this vaerr reads up to "
                f"{FORMAT_VERSION}: upgrade vaerr"
            )
        missing = [
            k
            for k in ("arch", "model_config", "state_dict", "bin_centres", "preprocessing")
            if k not in obj
        ]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}")
        return cls(
            arch=str(obj["arch"]),
            model_config=dict(obj["model_config"]),
            state_dict=dict(obj["state_dict"]),
            bin_centres=obj["bin_centres"],
            preprocessing=dict(obj["preprocessing"]),
            provenance=dict(obj.get("provenance") or {}),
            untrained=bool(obj.get("untrained", False)),
            version=version,
        )

    @property
    def model_id(self) -> str:
        """`<arch>-<12 hex>`: stable hash of the weights, bin centres, config and preprocessing."""
        return model_id(self)

    @property
    def bins(self) -> int:
        """Bins per target of the CE head."""
        return int(self.bin_centres.shape[-1])

    def config(self, runtime: ModelConfig | None = None) -> ModelConfig:
        """The ModelConfig to rebuild the network: the stored architecture fields over
        `runtime`'s other fields (device, dtype, finetune...)."""
        base = (runtime or ModelConfig()).model_dump()
        known = {k: v for k, v in self.model_config.items() if k in ModelConfig.model_fields}
        ignored = sorted(set(self.model_config) - set(known))
        if ignored:
            log.warning("checkpoint model_config fields unknown to this vaerr ignored: %s", ignored)
        return ModelConfig.model_validate({**base, **known, "arch": self.arch})

    def build(self, runtime: ModelConfig | None = None, device: str | None = None) -> SSVAERR:
        """The network with these weights, on `device` (else runtime.device, else cpu; "auto":
        cuda when available), in eval mode, fine-tune mode from `runtime`."""
        cfg = self.config(runtime)
        model = build_model(cfg)
        state = dict(self.state_dict)
        state.setdefault("bin_centres", self.bin_centres)
        model.load_state_dict(state, strict=True)
        model.set_bin_centres(self.bin_centres)
        return model.to(resolve_device(device or cfg.device, cfg.dtype)).eval()


def parameter_count(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> int:
    """Number of learnable parameters (elements), excluding buffers when `model` is given;
    from a state dict alone, counts every tensor except BN statistics and bin centres."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(
        t.numel() for k, t in state_dict.items() if not k.endswith(skip) and k != "bin_centres"
    )


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def model_id(ckpt: Checkpoint) -> str:
    """`<arch>-<12 hex>`: sha256 over the state dict (names, dtypes, shapes, bytes), bin
    centres, stored model config and preprocessing. Provenance is left out, so re-saving the
    same weights keeps the id."""
    h = hashlib.sha256()
    meta = {"arch": ckpt.arch, "config": ckpt.model_config, "pre": ckpt.preprocessing}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(ckpt.state_dict):
        t = ckpt.state_dict[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    h.update(_tensor_bytes(ckpt.bin_centres.float()))
    return f"{ckpt.arch}-{h.hexdigest()[:12]}"


def default_preprocessing(model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The crops a network expects when no full run config is at hand (METHOD.md defaults)."""
    cfg = model_cfg or ModelConfig()
    return {
        "fps": 25.0,
        "crop_size": cfg.crop_size,
        "grayscale": True,
        "mean": cfg.mean,
        "std": cfg.std,
        "landmarks": "fan68",
        "crop_scale": 1.3,
    }


def preprocessing_from_config(cfg: VaerrConfig) -> dict[str, Any]:
    """The preprocessing record of a run config: analysis fps, crop, normalisation, landmarks."""
    pre = default_preprocessing(cfg.model)
    pre.update(
        fps=float(cfg.video.fps),
        landmarks=cfg.faces.landmarks.kind,
        crop_scale=float(cfg.faces.align.crop_scale),
    )
    if cfg.faces.align.crop_size != cfg.model.crop_size:
        log.warning(
            "faces.align.crop_size=%d differs from model.crop_size=%d",
            cfg.faces.align.crop_size,
            cfg.model.crop_size,
        )
    return pre


def git_sha() -> str | None:
    """The source tree's git commit, or None when it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _provenance(**fields: Any) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        vaerr_version: str | None = version("vaerr")
    except Exception:  # not installed as a distribution
        vaerr_version = None
    prov: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "vaerr_version": vaerr_version,
        "torch_version": str(torch.__version__),
        "git_sha": git_sha(),
    }
    prov.update(fields)
    return prov


def _stored_config(model_cfg: ModelConfig) -> dict[str, Any]:
    spec = arch_spec(model_cfg)
    dump = model_cfg.model_dump(mode="json")
    stored = {k: dump[k] for k in ARCH_FIELDS}
    for k in ("frontend_channels", "widths", "blocks", "gru_hidden", "gru_layers"):
        v = getattr(spec, k)
        stored[k] = list(v) if isinstance(v, tuple) else v
    return stored


def checkpoint_from_model(
    model: SSVAERR,
    model_cfg: ModelConfig,
    preprocessing: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    untrained: bool = False,
) -> Checkpoint:
    """Snapshot a network (weights copied to CPU) with the config that built it.

    provenance: e.g. {"by": "vaerr finetune", "data": "SEWA train", "epochs": 30}; created,
    git sha and versions are added.
    """
    if model.arch != model_cfg.arch:
        raise ValueError(f"model is {model.arch!r} but the config says {model_cfg.arch!r}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(
        arch=model_cfg.arch,
        model_config=_stored_config(model_cfg),
        state_dict=state,
        bin_centres=model.bin_centres.detach().cpu().clone().float(),
        preprocessing=dict(preprocessing or default_preprocessing(model_cfg)),
        provenance=_provenance(**dict(provenance or {})),
        untrained=untrained,
    )


def init_checkpoint(
    model_cfg: ModelConfig,
    preprocessing: Mapping[str, Any] | None = None,
    seed: int = 0,
    by: str = "vaerr model init",
) -> Checkpoint:
    """An untrained checkpoint (random weights from `seed`; global RNG untouched), so the whole
    pipeline runs before any training. Everything made with it is flagged untrained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg)
    return checkpoint_from_model(
        model,
        model_cfg,
        preprocessing,
        {"by": by, "data": None, "epochs": 0, "seed": seed},
        untrained=True,
    )


# ---------------------------------------------------------------------------------------------
# Reading and writing through fsspec


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri).expanduser()


def _plain(obj: Any, where: str) -> Any:
    """Tensors and plain values only (what weights_only loads); str/int/float subclasses such
    as torch.__version__ become their base type; anything else is a TypeError at save time."""
    if isinstance(obj, Tensor) or obj is None or type(obj) in (bool, int, float, str):
        return obj
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Mapping):
        return {_plain(k, where): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__name__} cannot go in a checkpoint (plain types only)")


def save_checkpoint(
    ckpt: Checkpoint | Mapping[str, Any],
    uri: str,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write the checkpoint to a local path, file:// or any fsspec URI (s3://...); returns uri.

    Local writes are atomic (temporary file + rename) and create missing folders.
    """
    obj = _plain(ckpt.to_dict() if isinstance(ckpt, Checkpoint) else dict(ckpt), "checkpoint")
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if _is_local(uri):
        path = _local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return uri
    import fsspec

    with fsspec.open(uri, "wb", **(storage_options or {})) as f:
        f.write(data)
    return uri


def read_weights_file(
    uri: str, storage_options: dict[str, Any] | None = None, map_location: str = "cpu"
) -> Any:
    """torch.load(weights_only=True) of any fsspec URI: tensors and plain Python values only.

    A file that carries pickled arbitrary objects (code that would run on load) is refused
    with a ValueError; a missing file raises FileNotFoundError.
    """
    if _is_local(uri):
        path = _local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        data = path.read_bytes()
    else:
        import fsspec

        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = [ln for ln in msg if "Unsupported global" in ln or "WeightsUnpickler" in ln]
        first = (detail or msg or [type(exc).__name__])[0]
        raise ValueError(
            f"refusing to load {uri}: it holds pickled Python objects beyond tensors and plain "
            f"values, which could run code on load (torch.load weights_only=True said: {first}). "
            "Re-save it as a plain dict of tensors from a trusted environment."
        ) from None


def load_checkpoint(
    uri: str, storage_options: dict[str, Any] | None = None, map_location: str = "cpu"
) -> Checkpoint:
    """Read and validate an SS-VAERR checkpoint from a path or any fsspec URI."""
    return Checkpoint.from_dict(read_weights_file(uri, storage_options, map_location), uri)


# ---------------------------------------------------------------------------------------------
# Named checkpoints


_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def read_registry(
    registry_file: str, storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Parse a registry YAML `name: {uri: ..., sha256: ..., description: ...}`.

    Relative local URIs are resolved against the registry file's folder.
    """
    if _is_local(registry_file):
        path = _local_path(registry_file)
        if not path.is_file():
            raise FileNotFoundError(f"model registry file not found: {path}")
        text = path.read_text()
        base: Path | None = path.resolve().parent
    else:
        import fsspec

        with fsspec.open(registry_file, "rt", **(storage_options or {})) as f:
            text = f.read()
        base = None
    data = load_yaml(text, str(registry_file)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{registry_file}: a model registry is a mapping name -> {{uri, sha256}}")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        if isinstance(entry, str):
            entry = {"uri": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise ValueError(f"{registry_file}: entry {name!r} needs a `uri` string")
        unknown = set(entry) - {"uri", "sha256", "description"}
        if unknown:
            raise ValueError(f"{registry_file}: entry {name!r} has unknown keys {sorted(unknown)}")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA_RE.match(sha)):
            raise ValueError(
                f"{registry_file}: entry {name!r}: sha256 must be a string of 64 hex digits "
                "(quote it in YAML)"
            )
        uri = entry["uri"]
        if base is not None and _is_local(uri) and not _local_path(uri).is_absolute():
            uri = str(base / _local_path(uri))
        out[str(name)] = {**entry, "uri": uri}
    return out


def resolve_checkpoint(
    name_or_uri: str,
    registry_file: str | None = None,
    cache_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Map a registry name or a URI to what `load_checkpoint` reads.

    A name listed in the registry (`registry_file`, else env VAERR_MODEL_REGISTRY) is fetched
    into the weights cache (`<cache>/checkpoints/<name>/<basename>`; cache = cache_dir, else
    VAERR_CACHE, else ~/.cache/vaerr) and its sha256 checked (mismatch -> ValueError); remote
    entries must give a sha256, so a stale cached copy can never pass for a new one. Anything
    else is a path or URI and is returned unchanged (read directly, not cached).
    """
    from pipeline.weights import cache_dir as weights_cache
    from pipeline.weights import resolve_file

    reg = registry_file or os.environ.get(REGISTRY_ENV)
    if reg:
        registry = read_registry(reg, storage_options)
        if name_or_uri in registry:
            entry = registry[name_or_uri]
            uri, sha = entry["uri"], entry.get("sha256")
            if not _is_local(uri) and not sha:
                raise ValueError(
                    f"registry {reg}: remote entry {name_or_uri!r} needs a sha256 "
                    "(it is cached by file name and checked against it)"
                )
            if _is_local(uri):  # used in place, checksum checked
                return resolve_file(uri, None, sha256=sha, storage_options=storage_options)
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name_or_uri)
            cache = weights_cache(cache_dir) / "checkpoints" / safe
            return resolve_file(uri, str(cache), sha256=sha, storage_options=storage_options)
    if "://" in name_or_uri or _local_path(name_or_uri).exists():
        return name_or_uri
    where = (
        f"registry {reg}"
        if reg
        else f"any registry (none given: --set model.registry_file=FILE or env {REGISTRY_ENV})"
    )
    raise FileNotFoundError(
        f"{name_or_uri!r} is neither an existing checkpoint path/URI nor a name in {where}"
    )


def load_model(
    name_or_uri: str,
    model_cfg: ModelConfig | None = None,
    registry_file: str | None = None,
    cache_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[SSVAERR, Checkpoint]:
    """Resolve (registry name or URI), load, and build the network in eval mode.

    model_cfg supplies runtime fields (device, finetune, and registry_file unless given);
    the architecture comes from the checkpoint. Returns (model on device, checkpoint); tag
    outputs with `ckpt.model_id` and `ckpt.untrained`.
    """
    registry = registry_file or (model_cfg.registry_file if model_cfg else None)
    uri = resolve_checkpoint(name_or_uri, registry, cache_dir, storage_options)
    ckpt = load_checkpoint(uri, storage_options)
    return ckpt.build(model_cfg, device), ckpt


# ---------------------------------------------------------------------------------------------
# Encoder weights from a pretext checkpoint


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
