"""SS-VAERR checkpoints: the format, and saving and loading it. One torch file of tensors and
plain Python values, read and written through pipeline.storage (any path or URI), always
loaded with `torch.load(weights_only=True)`.

Layout of the saved dict (format version 1):
  format "vaerr.ssvaerr", version 1, arch str, model_config dict (resolved sizes, JSON types),
  state_dict {name: tensor}, bin_centres tensor [2, bins] (arousal, valence),
  preprocessing {fps, crop_size, mean, std, grayscale, detector, landmarks, crop_scale}
  (detector: faces.detector.kind; absent in files written before detector kinds: retinaface),
  provenance {created, by, data, epochs, seed, git_sha, vaerr_version, torch_version, ...},
  untrained bool.

Neighbours: pipeline.model.catalog resolves named checkpoints (a team's YAML file `name: {uri,
sha256}`); pipeline.model.encoder_weights exports and imports encoder weights (pretext
checkpoints, the authors' files).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import pickle
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pipeline.device import resolve_device
from pipeline.model.catalog import resolve_checkpoint
from pipeline.model.network import SSVAERR
from pipeline.model.registry import ARCHS, arch_spec, build_model
from pipeline.storage import Options, is_local, local_path, read_bytes, write_bytes
from schemas.config import DEFAULT_DETECTOR
from schemas.model import ModelConfig

if TYPE_CHECKING:
    from schemas.config import VaerrConfig

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "cached_model_id",
    "check_weights",
    "checkpoint_from_model",
    "default_preprocessing",
    "init_checkpoint",
    "load_checkpoint",
    "load_model",
    "model_id",
    "parameter_count",
    "plain_values",
    "preprocessing_from_config",
    "provenance_record",
    "read_weights_file",
    "save_checkpoint",
    "stored_config",
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
    def training_data(self) -> str | None:
        """What trained it (provenance `training_data`): "synthetic" (rendered faces: a demo
        model), a dataset name, or None when unknown."""
        value = self.provenance.get("training_data")
        return str(value) if value else None

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
    pre = dict(ckpt.preprocessing)
    if pre.get("detector") == DEFAULT_DETECTOR:  # the only detector before kinds: same ids
        pre.pop("detector")
    meta = {"arch": ckpt.arch, "config": ckpt.model_config, "pre": pre}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(ckpt.state_dict):
        t = ckpt.state_dict[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    h.update(_tensor_bytes(ckpt.bin_centres.float()))
    return f"{ckpt.arch}-{h.hexdigest()[:12]}"


MODEL_IDS_FILE = "model_ids.json"  # in the weights cache: {"<uri> <version>": model id}


def cached_model_id(
    uri: str, ckpt: Checkpoint, storage_options: Options = None, cache: str | None = None
) -> str:
    """`ckpt.model_id` of the checkpoint read from `uri`, hashed once per version of the file:
    remembered in the weights cache (pipeline.weights.cache_dir) under the URI and the file's
    version (its ETag, else size and modification time), so a job over a large checkpoint does
    not hash every weight again at each start. A rewritten file has a new version and is
    hashed again; nothing is taken from the checkpoint itself. Where the store gives no
    version, or the cache cannot be read or written, the id is computed as without a cache."""
    from pipeline.storage import file_info, version_of
    from pipeline.weights import cache_dir

    try:
        version = version_of(file_info(uri, storage_options))
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: never fail a job
        log.debug("no version for %s (%s): its model id is hashed", uri, type(exc).__name__)
        version = None
    if version is None:
        return ckpt.model_id
    key = f"{uri} {version}"
    path = cache_dir(cache) / MODEL_IDS_FILE
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    found = ckpt.model_id
    try:
        write_bytes(str(path), json.dumps({**known, key: found}, indent=0).encode())
    except OSError as exc:
        log.debug("model id cache %s not written: %s", path, exc)
    return found


def default_preprocessing(model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The crops a network expects when no full run config is at hand (METHOD.md defaults)."""
    cfg = model_cfg or ModelConfig()
    return {
        "fps": 25.0,
        "crop_size": cfg.crop_size,
        "grayscale": True,
        "mean": cfg.mean,
        "std": cfg.std,
        "detector": DEFAULT_DETECTOR,
        "landmarks": "fan68",
        "crop_scale": 1.3,
    }


def preprocessing_from_config(cfg: VaerrConfig) -> dict[str, Any]:
    """The preprocessing record of a run config: analysis fps, crop, normalisation, the
    detector and landmarks that found and aligned the faces."""
    pre = default_preprocessing(cfg.model)
    pre.update(
        fps=float(cfg.video.fps),
        detector=cfg.faces.detector.kind,
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


def provenance_record(**fields: Any) -> dict[str, Any]:
    """`fields` plus when and with what this was made: created (UTC ISO time), vaerr and torch
    versions, git sha (None where unknown)."""
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


def stored_config(model_cfg: ModelConfig) -> dict[str, Any]:
    """The architecture fields of `model_cfg` (ARCH_FIELDS) as JSON types, with the resolved
    sizes of its arch spec, so a checkpoint describes its network without the registry."""
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
        model_config=stored_config(model_cfg),
        state_dict=state,
        bin_centres=model.bin_centres.detach().cpu().clone().float(),
        preprocessing=dict(preprocessing or default_preprocessing(model_cfg)),
        provenance=provenance_record(**dict(provenance or {})),
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
# Reading and writing (pipeline.storage)


def plain_values(obj: Any, where: str) -> Any:
    """Tensors and plain values only (what weights_only loads); str/int/float subclasses such
    as torch.__version__ become their base type; anything else is a TypeError at save time."""
    if isinstance(obj, Tensor) or obj is None or type(obj) in (bool, int, float, str):
        return obj
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Mapping):
        return {plain_values(k, where): plain_values(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain_values(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__name__} cannot go in a checkpoint (plain types only)")


def save_checkpoint(
    ckpt: Checkpoint | Mapping[str, Any],
    uri: str,
    storage_options: Options = None,
) -> str:
    """Write the checkpoint to a local path, file:// or any fsspec URI (s3://...); returns uri.

    Writes are atomic (pipeline.storage.atomic_write: a hidden temporary name, renamed when
    whole) and create missing folders.
    """
    obj = plain_values(ckpt.to_dict() if isinstance(ckpt, Checkpoint) else dict(ckpt), "checkpoint")
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(uri, buf.getvalue(), storage_options)
    return uri


def read_weights_file(uri: str, storage_options: Options = None, map_location: str = "cpu") -> Any:
    """torch.load(weights_only=True) of any fsspec URI: tensors and plain Python values only.

    A file that carries pickled arbitrary objects (code that would run on load) is refused
    with a ValueError; a missing file raises FileNotFoundError.
    """
    if is_local(uri) and not local_path(uri).is_file():
        raise FileNotFoundError(f"checkpoint not found: {local_path(uri)}")
    data = read_bytes(uri, storage_options)
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
    uri: str, storage_options: Options = None, map_location: str = "cpu"
) -> Checkpoint:
    """Read and validate an SS-VAERR checkpoint from a path or any fsspec URI: the format,
    finite weights and the declared architecture (`check_weights`), before any work."""
    ckpt = Checkpoint.from_dict(read_weights_file(uri, storage_options, map_location), uri)
    check_weights(ckpt, uri)
    return ckpt


@functools.lru_cache(maxsize=16)
def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the network `cfg` builds (on the CPU, once per process and
    config: r18 takes about a second; the meta device would spend longer importing its
    kernels)."""
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream untouched
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(ckpt: Checkpoint, source: str = "checkpoint") -> None:
    """ValueError naming `source` and the first bad tensor when the weights are not finite
    (NaN/inf: a diverged training), or do not fit the declared architecture: the arch of
    `model_config` differs, a registered preset other than the declared one fits every
    tensor (a mislabelled checkpoint, which would get the wrong model id), or a tensor is
    missing, unexpected or of another shape than the declared network's."""
    tensors = {**ckpt.state_dict, "bin_centres": ckpt.bin_centres}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{source}: {name} is a {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{source} holds non-finite weights: tensor {name} has {bad} NaN/inf values "
                f"of {t.numel()} (the training that made it diverged): use another checkpoint"
            )
    stored = ckpt.model_config.get("arch", ckpt.arch)
    if stored != ckpt.arch:
        raise ValueError(f"{source} says arch {ckpt.arch!r} but its model_config says {stored!r}")
    have = {k: tuple(t.shape) for k, t in tensors.items()}
    if have != _shapes(ModelConfig(arch=ckpt.arch, bins=ckpt.bins)):
        for name in ARCHS:
            if name != ckpt.arch and have == _shapes(ModelConfig(arch=name, bins=ckpt.bins)):
                raise ValueError(
                    f"{source} says arch {ckpt.arch!r} but holds {name} weights (every tensor "
                    f"has {name}'s shape): a mislabelled checkpoint; re-save it as {name}"
                )
    want = _shapes(ckpt.config())
    for name in sorted(set(want) | set(have), key=list({**want, **have}).index):
        if have.get(name) != want.get(name):
            what = (
                "is missing" if name not in have
                else "is not part of the network" if name not in want
                else f"has shape {list(have[name])}, the network wants {list(want[name])}"
            )  # fmt: skip
            raise ValueError(f"{source} does not fit its arch {ckpt.arch!r}: tensor {name} {what}")


def load_model(
    name_or_uri: str,
    model_cfg: ModelConfig | None = None,
    registry_file: str | None = None,
    cache_dir: str | None = None,
    storage_options: Options = None,
    device: str | None = None,
) -> tuple[SSVAERR, Checkpoint]:
    """Resolve (a name in the catalog, pipeline.model.catalog, or a URI), load, and build the
    network in eval mode.

    model_cfg supplies runtime fields (device, finetune, and registry_file unless given);
    the architecture comes from the checkpoint. Returns (model on device, checkpoint); tag
    outputs with `ckpt.model_id` and `ckpt.untrained`.
    """
    registry = registry_file or (model_cfg.registry_file if model_cfg else None)
    uri = resolve_checkpoint(name_or_uri, registry, cache_dir, storage_options)
    ckpt = load_checkpoint(uri, storage_options)
    return ckpt.build(model_cfg, device), ckpt
