"""Where batches, ranks and checkpoints come from: an in-process session and a Ray Train one.

Split from training/loop.py (the worker loop and the driver stay there)."""

from __future__ import annotations

import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.storage import is_local, join, local_path
from schemas.config import VaerrConfig
from training.datasets.shards import ClipLoader
from training.losses import all_sum_autograd
from training.tasks import STATE_FILE, run_dir

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Sessions: where batches, ranks and checkpoints come from


class Session(ABC):
    """What `fit_worker` needs from its scheduler."""

    rank = 0
    world_size = 1

    @abstractmethod
    def device(self) -> torch.device:
        """The torch device of this worker."""

    @abstractmethod
    def prepare(self, module: nn.Module) -> nn.Module:
        """Move to the device (and wrap in DDP when distributed)."""

    @abstractmethod
    def batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """This worker's training batches of one epoch (ClipLoader columns)."""

    @abstractmethod
    def restore(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or None for a fresh run."""

    @abstractmethod
    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        """End of an epoch: metrics from every rank, the state from rank 0 (else None)."""

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each value over ranks (identity on one worker)."""
        return values

    def all_sum(self) -> Any:
        """An autograd-aware sum over ranks (None on one worker): CCC's global batch."""
        return None


def _save_state(state: dict[str, Any], folder: str) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(folder) / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, Path(folder) / STATE_FILE)


def _load_state(folder: str) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def spec_batches(
    specs: list[dict[str, Any]],
    loader: ClipLoader,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """One worker's batches of an epoch drawn in-process: the specs in an order seeded by
    (seed, epoch), every `world_size`-th from `rank` (the tail that does not divide is left
    out, so every rank takes the same number of steps: DDP needs it), loaded `batch_size` at
    a time. The same permutation on every rank, so the ranks' shares never overlap; clip
    positions are seeded by (seed, epoch, rank), so a run and its resumption draw alike."""
    order = np.random.default_rng([seed, 7, epoch]).permutation(len(specs))
    if world_size > 1:
        order = order[: len(order) - len(order) % world_size][rank::world_size]
    loader.reseed(seed, epoch, rank)  # clip positions reproducible per (seed, epoch, rank)
    for i in range(0, len(order), batch_size):
        rows = [specs[j] for j in order[i : i + batch_size]]
        yield loader({k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]})


class LocalSession(Session):
    """In-process: clips read by ClipLoader here, checkpoints in RUN/local_checkpoints/."""

    on_epoch: Any = None  # called with each epoch's metrics (the driver's epoch line)

    def __init__(self, cfg: VaerrConfig, specs: list[dict[str, Any]], loader: ClipLoader) -> None:
        self.cfg = cfg
        self.specs = specs
        self.loader = loader
        self.ckpt_root = join(run_dir(cfg), "local_checkpoints")

    def device(self) -> torch.device:
        use = self.cfg.train.use_gpu and torch.cuda.is_available()
        return torch.device("cuda" if use else "cpu")

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.to(self.device())

    def batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        bs = self.cfg.train.per_worker_batch(1)  # one worker: the global batch
        yield from spec_batches(self.specs, self.loader, self.cfg.train.seed, epoch, 0, 1, bs)

    def restore(self) -> dict[str, Any] | None:
        if not is_local(self.ckpt_root) or not local_path(self.ckpt_root).is_dir():
            return None
        path = local_path(self.ckpt_root)
        names = sorted(p for p in os.listdir(path) if p.startswith("epoch_"))
        return _load_state(os.path.join(path, names[-1])) if names else None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        if self.on_epoch is not None:
            self.on_epoch(metrics)
        if state is None or not is_local(self.ckpt_root):
            return
        _save_state(state, os.path.join(self.ckpt_root, f"epoch_{epoch:04d}"))
        names = sorted(p for p in os.listdir(self.ckpt_root) if p.startswith("epoch_"))
        for old in names[: -self.cfg.train.keep_checkpoints]:
            import shutil

            shutil.rmtree(os.path.join(self.ckpt_root, old), ignore_errors=True)


class RaySession(Session):
    """Inside a Ray Train worker: DDP via ray.train.torch; batches from the dataset shard, or,
    given `specs` and a caching `loader` (a corpus that fits in memory), drawn here from the
    sequences this worker holds (`spec_batches`): no Ray Data execution per epoch."""

    def __init__(
        self,
        cfg: VaerrConfig,
        specs: list[dict[str, Any]] | None = None,
        loader: ClipLoader | None = None,
    ) -> None:
        import ray.train

        self.cfg = cfg
        self.specs = specs
        self.loader = loader
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    def batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        import ray.train

        bs = self.cfg.train.per_worker_batch(self.world_size)
        if self.specs is not None and self.loader is not None:
            t = self.cfg.train
            yield from spec_batches(
                self.specs, self.loader, t.seed, epoch, self.rank, self.world_size, bs
            )
            return
        shard = ray.train.get_dataset_shard("train")
        yield from shard.iter_batches(
            batch_size=bs,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * bs,
            local_shuffle_seed=self.cfg.train.seed + 1000 * epoch + self.rank,
        )

    def restore(self) -> dict[str, Any] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return _load_state(d)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None, epoch: int) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            _save_state(state, tmp)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
            )

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size < 2 or not torch.distributed.is_initialized():
            return values
        keys = sorted(values)
        # on the worker's device: NCCL (use_gpu) serves only CUDA tensors
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device())
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.cpu().tolist())}

    def all_sum(self) -> Any:
        if self.world_size < 2 or not torch.distributed.is_initialized():
            return None
        return all_sum_autograd
