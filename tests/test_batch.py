"""The batch as the recipe meant it: train.batch_size is the global batch, split over the
workers (an error naming the fix when it does not divide), and the CCC term under data
parallelism is the CCC of the global batch (moments all-reduced across real gloo workers)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from schemas.config import load_config
from schemas.train import TrainConfig
from training.loop import run_training
from training.losses import all_sum_autograd, ccc_loss
from training.sessions import RaySession


def test_global_batch_splits_over_workers_or_names_the_fix(tmp_path):
    assert TrainConfig(batch_size=5).per_worker_batch() == 5
    assert TrainConfig(batch_size=8, num_workers=2).per_worker_batch() == 4
    assert TrainConfig(batch_size=8, num_workers=4).per_worker_batch(1) == 8  # in-process
    with pytest.raises(ValueError) as e:
        TrainConfig(batch_size=5, num_workers=4).per_worker_batch()
    msg = str(e.value)
    assert "train.batch_size=5" in msg and "train.num_workers=4" in msg
    assert "multiple of 4" in msg and "(e.g. 4 or 8)" in msg and "divisor of 5" in msg
    # a run refuses before reading data or starting Ray
    cfg = load_config(
        None,
        [
            "train.batch_size=5",
            "train.num_workers=2",
            f"data.shards={tmp_path / 'none'}",
            f"train.storage_path={tmp_path}",
        ],
    )
    with pytest.raises(ValueError, match="does not divide"):
        run_training(cfg, "finetune", runner="ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, pred, target, mask, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:  # the workers' own collective (the functional all_reduce), not a stand-in
        n = pred.shape[0] // world
        p = pred[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = ccc_loss(p, target[rank * n : (rank + 1) * n], mask[rank * n : (rank + 1) * n],
                        all_sum=all_sum_autograd)  # fmt: skip
        loss.backward()
        out[rank] = (float(loss), p.grad.clone())
    finally:
        dist.destroy_process_group()


def test_ccc_over_two_workers_is_the_global_batch_ccc():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 20, generator=g) * 2 - 1  # 3 clips per worker x 20 frames
    target = (pred * 0.5 + 0.3 * torch.rand(6, 20, generator=g)).clamp(-1, 1)
    target[:3] += 0.4  # the workers' halves differ: per-worker CCC != global CCC
    mask = torch.rand(6, 20, generator=g) > 0.2
    full = pred.clone().requires_grad_(True)
    ref_t = ccc_loss(full, target, mask)
    ref_t.backward()
    ref = float(ref_t.detach())
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_worker, args=(2, _free_port(), pred, target, mask, out), nprocs=2, join=True)
        res = dict(out)
    losses = [res[r][0] for r in (0, 1)]
    assert losses == pytest.approx([ref] * 2, abs=1e-5)  # every worker: the global CCC
    # per-worker CCC (the old behaviour) would differ from it
    local = [float(ccc_loss(pred[i * 3 : (i + 1) * 3], target[i * 3 : (i + 1) * 3],
                            mask[i * 3 : (i + 1) * 3])) for i in (0, 1)]  # fmt: skip
    assert abs(sum(local) / 2 - ref) > 1e-2
    # all_reduce's backward sums the 2 identical upstream gradients; DDP's averaging divides
    # by 2: the gradient each worker applies is the global CCC's gradient
    grad = torch.cat([res[0][1], res[1][1]]) / 2
    assert torch.allclose(grad, full.grad, atol=1e-6)


class _Delivered(Exception):
    """The collective got its tensor (a meta tensor holds no data to go on with)."""


@pytest.mark.parametrize("device", [torch.device("meta"), torch.device("cpu")])
def test_epoch_mean_collective_runs_on_the_workers_device(monkeypatch, device):
    # With use_gpu, Ray Train's backend is NCCL, which serves only tensors on the worker's
    # (CUDA) device: the epoch's loss mean used to all-reduce a CPU tensor and crash there.
    # Without a GPU: a stand-in for NCCL that refuses any tensor off the declared device.
    seen = []

    def nccl_like(t, *args, **kwargs):
        seen.append(t.device)
        if t.device != device:
            raise RuntimeError(f"No backend type associated with device type {t.device.type}")
        if device.type == "meta":
            raise _Delivered
        t.mul_(2)  # the other rank reported the same values

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", nccl_like)
    session = RaySession.__new__(RaySession)  # a worker's session, without Ray
    session.cfg, session.rank, session.world_size = load_config(), 0, 2
    session.device = lambda: device
    values = {"train/loss": 0.5, "train/ccc": 0.25}
    if device.type == "meta":
        with pytest.raises(_Delivered):
            session.all_mean(values)
    else:
        assert session.all_mean(values) == values  # the mean of two equal ranks
    assert seen == [device]
