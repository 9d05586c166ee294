"""The training loop of `vaerr finetune` and `vaerr pretrain`, on Ray Train or in-process.

What runs (one function per worker, `fit_worker`): build the task's network, AdamW with a
per-epoch cosine schedule, epochs of random clips (each a batch of `train.batch_size` clips
of `train.clip_seconds`, `train.clips_per_file` per sequence and epoch, augmented), then on
rank 0 validation on whole sequences, the best model kept by the task's score (fine-tuning:
mean of arousal and valence CCC, AVEC convention), per-epoch metrics appended to
RUN/metrics.jsonl, and a resume checkpoint (model, optimiser, epoch, best, RNG) reported.

How it is scheduled (`run_training`): `runner="ray"` is a Ray Train `TorchTrainer` (DDP over
`train.num_workers` workers, CPU/gloo or one GPU each/NCCL). A corpus whose crops fit in
`train.clips_in_memory_mb` is read once by every worker and its clips drawn there
(`sessions.spec_batches`: each rank its share of one seeded permutation per epoch); a larger
one streams: a Ray Data dataset of clip specs that `get_dataset_shard` splits equally across
workers, whose clips Ray Data tasks read from the shards every epoch (`ClipLoader`). On the
demo's corpus, Ray Data's per-epoch execution was most of an epoch's time (30 s of epochs
whose steps take 2.5 s: bench/RESULTS.md). Checkpoints go to `train.storage_path`
(local or S3) under `train.name`; `FailureConfig(max_failures)` restarts a failed worker
group from the last checkpoint, and a new run with the same name resumes from it too
(`train.chaos_kill_after_epochs` SIGKILLs rank 0 once, to see that recovery work).
`runner="local"` loops the same `fit_worker` in this process, with the same checkpoints
(tests, one machine without Ray).

RUN = storage_path/name holds: config.yaml, metrics.jsonl (one JSON record per epoch),
best.pt (fine-tuning: an SS-VAERR checkpoint `vaerr infer` loads), encoder.pt (pretraining,
unless pretrain.output says otherwise), result.json, and Ray Train's checkpoint_* folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.model.checkpoint import (
    save_checkpoint,
)
from pipeline.progress import EpochLine
from pipeline.raysetup import ray_session
from pipeline.record import utc_now, write_record
from pipeline.storage import (
    absolute,
    arrow_filesystem,
    copy,
    join,
    read_jsonl,
    write_text,
)
from schemas.config import VaerrConfig, config_dump, config_yaml
from training.datasets.shards import (
    ClipLoader,
    clip_specs,
    load_clip_batch,
    read_sequences,
    specs_memory_mb,
    training_data,
)
from training.sessions import LocalSession, RaySession, Session
from training.tasks import (
    METRICS_FILE,
    TASKS,
    TaskExtras,
    batch_tensors,
    resolve_task,
    run_dir,
    unwrap,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The per-worker function


def lr_at(epoch: int, cfg: VaerrConfig) -> float:
    """Learning rate of an epoch: cosine from train.lr down to train.min_lr over the run
    (stepped per epoch), or constant."""
    t = cfg.train
    if t.scheduler == "constant" or t.epochs <= 1:
        return t.lr
    return t.min_lr + (t.lr - t.min_lr) * (1 + math.cos(math.pi * epoch / t.epochs)) / 2


def _append_metrics(uri: str, record: dict[str, Any], cfg: VaerrConfig) -> None:
    """Rewrite RUN/metrics.jsonl with this epoch's record replacing any earlier one of the same
    or a later epoch (a resumed run re-does the epochs after its checkpoint)."""
    earlier = [r for r in read_jsonl(uri, cfg.storage) if r.get("epoch", -1) < record["epoch"]]
    lines = [*earlier, record]
    text = "".join(json.dumps(r, default=float) + "\n" for r in lines)
    write_text(uri, text, cfg.storage)


@dataclass
class _Fit:
    """One worker's training state: the task, its network (and the session's wrapped copy),
    the optimiser over its trainable parameters, the device, the best epoch so far, the
    restarts before this one and, with train.ema_decay on rank 0, the weights' moving
    average (what is validated and delivered)."""

    task: Any
    wrapped: nn.Module
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    device: torch.device
    start: int = 0
    best: dict[str, Any] | None = None
    restarts: int = 0
    ema: AveragedModel | None = None

    def judged(self) -> nn.Module:
        """The network that is validated and becomes the product: the moving average where
        there is one, else the trained network itself."""
        return self.ema.module if self.ema is not None else self.wrapped


def fit_worker(cfg: VaerrConfig, task_name: str, extras: TaskExtras, session: Session) -> dict:
    """Train for train.epochs (resuming from the session's checkpoint); returns the last
    epoch's metrics. Every rank runs this; rank 0 validates and writes the run's files."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % (2**32))
    fit = _start(cfg, task_name, dataclasses.replace(extras, all_sum=session.all_sum()), session)
    last: dict[str, Any] = {}
    for epoch in range(fit.start, t.epochs):
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg)
        for g in fit.opt.param_groups:
            g["lr"] = lr
        steps, train = _train_epoch(cfg, fit, session, epoch, extras.steps_per_epoch or 1)
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "steps": steps, **train}
        if session.rank == 0:
            state = _finish_epoch(cfg, fit, epoch, metrics, time.perf_counter() - t0, session)
            session.report(_json_metrics(metrics), state, epoch)
            if t.chaos_kill_after_epochs == epoch + 1 and fit.restarts == 0:
                log.warning("train.chaos_kill_after_epochs: rank 0 SIGKILLs itself (pid %d) "
                            "after epoch %d", os.getpid(), epoch + 1)  # fmt: skip
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            session.report(_json_metrics(metrics), None, epoch)
        last = metrics
    return last


def _start(cfg: VaerrConfig, task_name: str, extras: TaskExtras, session: Session) -> _Fit:
    """Build the task's network and optimiser on the session's device, resumed from the
    session's checkpoint when there is one."""
    t = cfg.train
    task = TASKS[task_name](cfg, extras)
    module = task.build()
    device = session.device()
    module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas)
    start, best, restarts = 0, None, 0
    # The average is kept where it is judged (rank 0): DDP keeps every rank's weights equal.
    ema = None
    if t.ema_decay and session.rank == 0:
        average = get_ema_multi_avg_fn(t.ema_decay)
        ema = AveragedModel(module, multi_avg_fn=average, use_buffers=True)
    state = session.restore()
    if state is not None:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start, best, restarts = int(state["epoch"]) + 1, state.get("best"), state["restarts"] + 1
        log.info("rank %d: resumed after epoch %d (restart %d)", session.rank, start - 1, restarts)
    return _Fit(task, session.prepare(module), params, opt, device, start, best, restarts, ema)


def _train_epoch(
    cfg: VaerrConfig, fit: _Fit, session: Session, epoch: int, est_steps: int
) -> tuple[int, dict[str, float]]:
    """One epoch of optimiser steps over the session's batches; (steps, mean train losses,
    the total loss also averaged over ranks)."""
    t = cfg.train
    gen = torch.Generator().manual_seed(int(t.seed) * 100_003 + epoch * 1009 + session.rank)
    fit.wrapped.train()
    sums: dict[str, float] = {}
    steps = 0
    for batch in session.batches(epoch):
        if t.max_steps_per_epoch and steps >= t.max_steps_per_epoch:
            break
        b = batch_tensors(batch, fit.device)
        b["length"] = b["length"].clamp_min(1).long()
        loss, parts = fit.task.loss(fit.wrapped, b, gen)
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            nn.utils.clip_grad_norm_(fit.params, t.grad_clip)
        fit.opt.step()
        if fit.ema is not None:
            fit.ema.update_parameters(unwrap(fit.wrapped))
        steps += 1
        fit.task.after_step(fit.wrapped, (epoch + steps / max(est_steps, steps)) / t.epochs)
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
    train = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
    # the loss averaged over ranks (the same key on every rank: a collective)
    train.update(session.all_mean({"train/loss": sums.get("loss", 0.0) / max(steps, 1)}))
    return steps, train


def _finish_epoch(
    cfg: VaerrConfig,
    fit: _Fit,
    epoch: int,
    metrics: dict[str, Any],
    seconds: float,
    session: Session,
) -> dict[str, Any]:
    """Rank 0: validate into `metrics`, save the product when the score improved, append the
    epoch to RUN/metrics.jsonl; returns the resume checkpoint's state."""
    rdir = run_dir(cfg)
    judged = fit.judged()
    metrics.update(fit.task.validate(judged))
    score = fit.task.score(metrics)
    # without validation (score None throughout) the last epoch is the product;
    # with it, only a better score replaces the best (a NaN epoch never does)
    prev = None if fit.best is None else fit.best.get("score")
    if score is None:
        improved = fit.best is None or prev is None
    else:
        improved = prev is None or score > prev
    if improved:
        fit.best = {
            "epoch": epoch,
            "score": score,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        }
        product = fit.task.product(judged, epoch, metrics)
        save_checkpoint(product, join(rdir, fit.task.product_name), cfg.storage)
    metrics.update(
        {
            "best_epoch": fit.best["epoch"],
            "best_score": fit.best["score"],
            "time_s": round(seconds, 3),
            "restarts": fit.restarts,
            "world_size": session.world_size,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": utc_now(),
        }
    )
    _append_metrics(join(rdir, METRICS_FILE), metrics, cfg)
    log.info("epoch %d: %s", epoch, {k: v for k, v in metrics.items() if "/" in k})
    return {
        "model": _cpu(unwrap(fit.wrapped).state_dict()),
        "ema": None if fit.ema is None else _cpu(fit.ema.state_dict()),
        "optimizer": fit.opt.state_dict(),
        "epoch": epoch,
        "best": fit.best,
        "restarts": fit.restarts,
    }


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _json_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, int | float | str) or v is None}


def _ray_train_fn(config: dict[str, Any]) -> None:
    """The Ray Train per-worker entry point (`config["specs"]`: the clip specs when the corpus
    is held in memory by every worker, else None and clips come from the dataset shard)."""
    cfg = config["cfg"]
    torch.set_num_threads(cfg.train.threads or max(1, int(round(cfg.train.cpus_per_worker))))
    specs = config.get("specs")
    loader = ClipLoader(**config["loader"], cache=True) if specs is not None else None
    fit_worker(cfg, config["task"], config["extras"], RaySession(cfg, specs, loader))


# ---------------------------------------------------------------------------------------------
# The driver


def resolve_paths(cfg: VaerrConfig) -> VaerrConfig:
    """The config with its local paths absolute."""
    upd_train = {"storage_path": absolute(cfg.train.storage_path)}
    upd_data = {"shards": absolute(cfg.data.shards)}
    upd_model = {}
    if cfg.model.encoder_checkpoint:
        upd_model["encoder_checkpoint"] = absolute(cfg.model.encoder_checkpoint)
    upd_pre = {}
    if cfg.pretrain.output:
        upd_pre["output"] = absolute(cfg.pretrain.output)
    return cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update=upd_train),
            "data": cfg.data.model_copy(update=upd_data),
            "model": cfg.model.model_copy(update=upd_model),
            "pretrain": cfg.pretrain.model_copy(update=upd_pre),
        }
    )


def prepare_run(cfg: VaerrConfig, task_name: str) -> tuple[list[dict], TaskExtras]:
    """Driver side: the clip specs of the training sequences and the task's extras."""
    t = cfg.train
    root = cfg.data.shards
    train_seqs = read_sequences(root, cfg.storage, tuple(t.train_splits))
    val_seqs = read_sequences(root, cfg.storage, tuple(t.val_splits)) if t.val_splits else []
    task_cls = TASKS[task_name]
    specs = clip_specs(train_seqs, t.clips_per_file, task_cls.labelled_only, task_cls.needs_audio)
    if not specs:
        what = "labelled " if task_cls.labelled_only else "audio " if task_cls.needs_audio else ""
        raise ValueError(
            f"no {what}sequences of splits {list(t.train_splits)} in {root} "
            "(run `vaerr preprocess` first?)"
        )
    extras = task_cls.prepare(
        cfg, train_seqs, TaskExtras(val_sequences=val_seqs, training_data=training_data(train_seqs))
    )
    log.info(
        "%s: %d training sequences (%d clip specs per epoch), %d validation sequences",
        task_name,
        len(train_seqs),
        len(specs),
        len(val_seqs),
    )
    return specs, extras


def run_training(
    cfg: VaerrConfig,
    task: str = "finetune",
    *,
    runner: str = "ray",
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune (`task="finetune"`) or pretrain (`"lira"`, `"byol"`, `"dino"`; `"pretrain"`
    means cfg.pretrain.method). Returns the summary, also written to RUN/result.json."""
    task = resolve_task(task, cfg)
    cfg = resolve_paths(cfg)
    t = cfg.train
    rdir = run_dir(cfg)
    started = utc_now()
    t0 = time.perf_counter()
    if runner == "local" and t.chaos_kill_after_epochs is not None:
        raise ValueError("train.chaos_kill_after_epochs needs the Ray runner (in-process, the "
                         "drill would kill this process)")  # fmt: skip
    workers = t.num_workers if runner == "ray" else 1
    per_worker = t.per_worker_batch(workers)  # ValueError naming the fix if it does not divide
    specs, extras = prepare_run(cfg, task)
    steps = math.ceil(len(specs) / t.batch_size)  # optimiser steps: the global batch
    extras = dataclasses.replace(extras, steps_per_epoch=min(steps, t.max_steps_per_epoch or steps))
    write_text(join(rdir, "config.yaml"), config_yaml(cfg), cfg.storage)
    fps = float(cfg.video.fps)
    loader_kwargs = {
        "clip_frames": t.clip_frames_at(fps),
        "storage": cfg.storage,
        "audio": TASKS[task].needs_audio,
        "crop_size": cfg.model.crop_size,
        "seed": t.seed,
        "audio_dim": extras.audio_dim,
    }
    in_memory = specs_memory_mb(specs, cfg.model.crop_size) <= t.clips_in_memory_mb
    if runner == "local":
        session = LocalSession(cfg, specs, ClipLoader(**loader_kwargs, cache=in_memory))
        session.on_epoch = EpochLine(t.epochs, task)
        last = fit_worker(cfg, task, extras, session)
        error = None
    else:
        with ray_session(ray_address, ray_init):  # started here unless already joined
            last, error = _fit_ray(cfg, task, specs, extras, loader_kwargs, in_memory)
    product = join(rdir, TASKS[task](cfg, extras).product_name)
    export = TASKS[task].export_uri(cfg)
    if export:
        copy(product, export, cfg.storage)
        product = export
    summary = {
        "task": task,
        "run": rdir,
        "product": product,
        "epochs": t.epochs,
        "last": _json_metrics(last or {}),
        "best": _read_best(rdir, cfg),
        "wall_s": round(time.perf_counter() - t0, 2),
        "runner": runner,
        "num_workers": workers,
        "batch": {"global": t.batch_size, "per_worker": per_worker, "workers": workers},
        "error": error,
    }
    record = {
        **summary,
        "started": started,
        "ended": utc_now(),
        "config": config_dump(cfg),
    }
    write_record(join(rdir, "result.json"), record, cfg.storage)
    if error:
        raise RuntimeError(f"training failed: {error}")
    return summary


def _fit_ray(
    cfg: VaerrConfig,
    task: str,
    specs: list[dict],
    extras: TaskExtras,
    loader_kwargs: dict[str, Any],
    in_memory: bool = False,
) -> tuple[dict[str, Any], str | None]:
    """A Ray Train TorchTrainer (inside a ray_session) whose workers draw clips from the
    sequences they hold in memory (`in_memory`), or from a Ray Data dataset of clip specs:
    (the last reported metrics, None) or ({}, the error)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from training.progress import EpochRelay

    t = cfg.train
    loop_config = {"cfg": cfg, "task": task, "extras": extras, "loader": loader_kwargs}
    datasets = {}
    if in_memory:
        loop_config["specs"] = specs
    else:
        datasets["train"] = _clip_dataset(cfg, specs, loader_kwargs)
    storage_path, storage_fs = arrow_filesystem(cfg.train.storage_path, cfg.storage)
    relay = EpochRelay(t.epochs, task)  # one line per epoch on this terminal
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _ray_train_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=t.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=[relay.callback],
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=list(datasets)),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # surfaced in result.json, then raised by run_training
        log.error("Ray Train run failed: %s", exc)
        return {}, f"{type(exc).__name__}: {exc}"
    finally:
        relay.close()
    return dict(result.metrics or {}), None


def _clip_dataset(cfg: VaerrConfig, specs: list[dict], loader_kwargs: dict[str, Any]) -> Any:
    """The streaming path: a Ray Data dataset of the clip specs (shuffled, blocks in a seeded
    order) whose clips are read from the shards by `load_clip_batch` tasks, every epoch. With
    `train.max_steps_per_epoch`, the first max_steps x batch_size specs of that order only."""
    import ray

    t = cfg.train
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = list(specs)
    np.random.default_rng(t.seed).shuffle(rows)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 64)))
    ds = ds.randomize_block_order(seed=t.seed)
    if t.max_steps_per_epoch:  # a capped epoch reads only the clips its steps take
        ds = ds.limit(t.max_steps_per_epoch * t.batch_size)
    return ds.map_batches(
        load_clip_batch,
        fn_kwargs=loader_kwargs,
        batch_size=t.per_worker_batch(),
        batch_format="numpy",
        num_cpus=t.loader_num_cpus,
    )


def _read_best(rdir: str, cfg: VaerrConfig) -> dict[str, Any] | None:
    rows = read_jsonl(join(rdir, METRICS_FILE), cfg.storage)
    if not rows:
        return None
    best_epoch = rows[-1].get("best_epoch")
    return next((r for r in rows if r.get("epoch") == best_epoch), rows[-1])


def read_metrics(cfg: VaerrConfig) -> list[dict[str, Any]]:
    """The per-epoch records of a run (RUN/metrics.jsonl), oldest first."""
    return read_jsonl(join(run_dir(resolve_paths(cfg)), METRICS_FILE), cfg.storage)
