"""The one resumable-job skeleton: what `vaerr infer` (pipeline/runner.py) and `vaerr
preprocess` (training/preprocess.py) both run, so their rerun semantics cannot drift.

    lock ROOT -> status rows read back -> the rows still to do -> sweep a killed run's
      temporary files -> config.yaml -> the opening files (run.json "running", the manifest)
      -> stages with progress into the sink -> the sink's summary (pending noted) -> the record

A job says what differs as data, made before the skeleton runs: a `JobSpec` (its listed input
rows, where its status rows live, its stages, the files it opens with) and a `JobSink` (the
object that receives the last stage's batches and sums them up). The skeleton calls only
down: storage, the lock, the planning functions of pipeline/status.py, the scheduler and the
sink; no code of the module that made the job is called back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.outlock import output_lock
from pipeline.progress import Progress
from pipeline.record import record_text, utc_now
from pipeline.scheduling import StageSpec, run_stages
from pipeline.status import StatusRows, note_pending, plan_pending
from pipeline.storage import Storage, StorageUnavailable, is_transient, write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """What one run of a resumable job does, as data.

    `command` ("infer", "preprocess") names the lock's holder and the progress bar; `rows` are
    the listed inputs, one per video (video_id, ...); `version` the status-row fields a done
    video must match; `item_columns` the stage input columns taken from each pending row
    (`attempts`, when named, is filled with the runs that already tried the video); `opening`
    the (URI, content) files written before the stages (a dict: JSON record; a table:
    Parquet); `running`, when given, the opening record that is marked failed at `record_uri`
    should the stages fail."""

    command: str
    root: str
    rows: list[dict[str, Any]]
    status: StatusRows
    version: Mapping[str, str]
    config_uri: str
    config_text: str
    record_uri: str
    stages: list[StageSpec]
    item_columns: tuple[str, ...]
    max_attempts: int
    opening: Sequence[tuple[str, dict[str, Any] | pa.Table]] = ()
    running: dict[str, Any] | None = field(default=None)


class JobSink(Protocol):
    """What receives the last stage's batches of a job and sums the run up."""

    def start(self, bar: Progress, tried: dict[str, int]) -> None:
        """Before the first batch: the progress bar to tick per finished video, and video_id
        -> runs that already tried it."""

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        """One batch of the last stage's rows."""

    def summary(self, rows: list[dict[str, Any]], todo: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's counts once the stages ended (raises when videos were left incomplete)."""

    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The JSON record written at the end."""


def stage_items(
    todo: list[dict[str, Any]], columns: tuple[str, ...], tried: dict[str, int]
) -> list[dict[str, Any]]:
    """The stage input rows of the pending rows: `columns` of each (None as ""), `attempts`
    as the runs that already tried the video."""
    items = []
    for r in todo:
        item = {k: "" if r.get(k) is None else r[k] for k in columns}
        if "attempts" in columns:
            item["attempts"] = str(tried.get(r["video_id"], 0))
        items.append(item)
    return items


def run_job(
    spec: JobSpec,
    sink: JobSink,
    store: Storage,
    force: bool = False,
    runner: str = "ray",
    address: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the job (one writer per root: a second at once is refused by the lock) and return
    its summary, also written into the record. Every input ends as one status row; a rerun
    skips the done ones (`force`: none)."""
    with output_lock(spec.root, store, f"vaerr {spec.command}"):
        done = spec.status.read(store)
        todo, tried = plan_pending(spec.rows, done, spec.version, force, spec.max_attempts)
        # Temporary files of writes an earlier run never finished (killed, a full disk): ours
        # to remove, since the lock says no other job writes here.
        store.sweep_temp(spec.root)
        store.write_text(spec.config_uri, spec.config_text)
        try:
            for uri, content in spec.opening:
                if isinstance(content, pa.Table):
                    store.write_parquet(uri, content)
                else:
                    store.write_text(uri, record_text(content))
            with Progress(spec.command, len(todo)) as bar:
                sink.start(bar, tried)
                items = stage_items(todo, spec.item_columns, tried)
                run_stages(items, spec.stages, sink.consume, runner, address=address,
                           ray_init=ray_init)  # fmt: skip
            summary = sink.summary(spec.rows, todo)
        except BaseException as exc:
            if spec.running is not None:
                _mark_failed(spec.record_uri, spec.running, exc, store)
            raise
        note_pending(summary)
        store.write_text(spec.record_uri, record_text(sink.record(summary)))
    return summary


def _mark_failed(uri: str, running: dict[str, Any], exc: BaseException, store: Storage) -> None:
    """The record says the run failed: best effort, and not when storage is what failed (the
    client alone would spend ~45 s on it; one try, no retries): the record then keeps saying
    "running", which `vaerr verify` reports too."""
    running.update(state="failed", ended=utc_now(), error=type(exc).__name__)
    if isinstance(exc, StorageUnavailable) or is_transient(exc):
        return
    try:
        write_text(uri, record_text(running), store.cfg)
    except Exception:
        log.warning("could not mark %s failed; it still says running", uri)
