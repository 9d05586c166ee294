"""Run the batch job: manifest -> FaceStage -> ModelStage -> TimelineWriter.

This module assembles `vaerr infer` and calls down only: it loads the checkpoint, lists the
INPUTs (pipeline/manifest.py), says which stages run (pipeline/stages.py, scheduled by
pipeline/scheduling.py's `run_stages`: in-process, or Ray Data actor pools, laptop or
cluster) into which sink (pipeline/writer.py), and hands that to the resumable-job skeleton
(pipeline/job.py), which locks OUT, plans the rerun and writes the run record.

Outputs (schemas.tables): OUT/timelines/<video_id>.parquet for ok videos, then
OUT/videos/<video_id>.parquet (the status row: written last, it commits the video), and
OUT/run.json (written as "running" before any video, "completed" at the end). A video is done
when its status row matches (source version, model_id, config_hash) and is final; reruns skip
done videos, `force` recomputes. A failure of the environment (storage, memory, a dead worker)
is not final until `infer.max_attempts` runs have tried the video. One file per video id means a
rerun overwrites rather than duplicates, and a changed checkpoint or config recomputes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import torch

from pipeline.device import resolve_device
from pipeline.job import JobSpec, run_job
from pipeline.manifest import expand_inputs
from pipeline.outpaths import OutPaths
from pipeline.record import utc_now
from pipeline.scheduling import StageSpec, warm_up
from pipeline.stages import FaceStage, ModelStage
from pipeline.status import StatusRows
from pipeline.storage import Storage
from pipeline.writer import InferSink
from schemas.config import StorageConfig, VaerrConfig, config_dump, config_hash, config_yaml
from schemas.tables import SYNTHETIC, VIDEOS, VIDEOS_ADDED

log = logging.getLogger(__name__)

# The stage input columns of `vaerr infer`: one row per pending video.
ITEM_COLUMNS = ("video_id", "uri", "source_etag")


def infer_status(out: str) -> StatusRows:
    """Where `vaerr infer`'s status rows live (OUT/videos/) and how they read back: files
    written before a column was added with nulls there; an unreadable or corrupt file skipped
    with a warning naming it (its video is then pending, and the rerun rewrites it)."""
    return StatusRows(OutPaths(out).videos, VIDEOS, VIDEOS_ADDED, _pending)


def read_status(out: str, storage: StorageConfig | Storage | None = None) -> pa.Table:
    """All status rows under OUT/videos/ (empty table if none; see `infer_status`). A storage
    outage raises after the storage's retries, so it never makes every video look pending."""
    return infer_status(out).read(Storage.of(storage))


def _pending(uri: str, exc: Exception) -> None:
    log.warning("status file %s unreadable (%s): its video counts as pending", uri,
                type(exc).__name__)  # fmt: skip


def stage_specs(cfg: VaerrConfig, checkpoint: str, runner: str = "ray") -> list[StageSpec]:
    """What inference runs: the face stage (infer.face_videos videos per call, fed to its
    device together) and the model stage (batches of windows, `infer.windows_per_batch` of
    where it runs: on Ray a GPU when its actors ask for one, in process this machine's
    `model.device`; its pool starts with one actor, so a cluster still scaling up its GPU
    nodes makes progress)."""
    inf = cfg.infer
    if runner == "ray":
        gpu = inf.model_num_gpus > 0
    else:
        gpu = torch.device(resolve_device(cfg.model.device)).type != "cpu"
    return [
        StageSpec(
            FaceStage,
            {"cfg": cfg},
            batch_size=inf.face_videos,
            num_cpus=inf.face_num_cpus,
            num_gpus=inf.face_num_gpus,
            pool_size=inf.face_actors,
        ),
        StageSpec(
            ModelStage,
            {"cfg": cfg, "checkpoint": checkpoint},
            batch_size=inf.windows_per_batch(gpu),
            num_cpus=inf.model_num_cpus,
            num_gpus=inf.model_num_gpus,
            pool_size=inf.model_actors,
        ),
    ]


def run_inference(
    cfg: VaerrConfig,
    inputs: Iterable[str],
    out: str,
    checkpoint: str,
    *,
    force: bool = False,
    runner: str = "ray",
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    glob: bool = True,
) -> dict[str, Any]:
    """The main job. Returns the summary (also written into OUT/run.json, with the INPUTs as
    given and how many videos each listed). `glob=False`: no INPUT is a pattern
    (pipeline/manifest.py)."""
    from pipeline.model import cached_model_id, load_checkpoint, resolve_checkpoint

    started = (time.perf_counter(), utc_now())
    store = Storage(cfg.storage)  # made once, passed down: its verbs retry outages
    # the job's storage, not options made from the checkpoint's name: a name's registry and
    # the file it lists each get their own (a name alone gave none: issue 25)
    ckpt_uri = resolve_checkpoint(checkpoint, cfg.model.registry_file, cfg.cache_dir, store)
    # in process, the stages' models load from now on, beside the checkpoint's id and listing
    stages = warm_up(stage_specs(cfg, ckpt_uri, runner), runner)
    ckpt = load_checkpoint(ckpt_uri, store)
    if ckpt.untrained:
        log.warning("checkpoint %s is UNTRAINED: every output is marked untrained", checkpoint)
    if ckpt.training_data == SYNTHETIC:
        log.warning("checkpoint %s was trained on SYNTHETIC faces only (a demo model): every "
                    "status row says training_data=synthetic", checkpoint)  # fmt: skip
    # the id hashes every weight: once per version of the file (the weights cache keeps it),
    # not at each job or use
    model_id = cached_model_id(ckpt_uri, ckpt, store, cfg.cache_dir)
    version = {"model_id": model_id, "config_hash": config_hash(cfg)}
    manifest, given = expand_inputs(list(inputs), store, cfg.infer, glob)
    paths = OutPaths(out)
    running = _running_record(cfg, out, checkpoint, ckpt, version, given, started[1], runner,
                              ray_address)  # fmt: skip
    spec = JobSpec(
        command="infer",
        root=out,
        rows=manifest.to_pylist(),
        status=infer_status(out),
        version=version,
        config_uri=paths.config,
        config_text=config_yaml(cfg),
        record_uri=paths.run_record,
        stages=stages,
        item_columns=ITEM_COLUMNS,
        max_attempts=cfg.infer.max_attempts,
        # run.json first, then the manifest (verify checks each input has one status row)
        opening=[(paths.run_record, running), (paths.manifest, manifest)],
        running=running,
    )
    sink = InferSink(cfg, out, model_id, ckpt.untrained, ckpt.training_data, running,
                     started[0], store)  # fmt: skip
    return run_job(spec, sink, store, force, runner, ray_address, ray_init)


def _running_record(
    cfg: VaerrConfig,
    out: str,
    checkpoint: str,
    ckpt: Any,
    version: dict[str, str],
    given: list[dict[str, Any]],
    started: str,
    runner: str,
    ray_address: str | None,
) -> dict[str, Any]:
    """OUT/run.json as written before any video: it says from the start which run is in
    progress (a killed run stays "running"), so `vaerr verify` never takes a half-done rerun
    for the last completed run; `inputs` (the INPUTs as given, how many videos each listed)
    is what verify checks the status rows against."""
    return {
        "run_id": uuid.uuid4().hex[:16],
        "state": "running",
        "started": started,
        **version,
        "checkpoint": checkpoint,
        "runner": runner,
        "ray_address": ray_address,
        "output": out,
        "inputs": given,
        "model": {"arch": ckpt.arch, "version": ckpt.version, "provenance": ckpt.provenance},
        "training_data": ckpt.training_data,
        "config": config_dump(cfg),
    }
