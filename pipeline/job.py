"""The one resumable-job skeleton: what `vaerr infer` (pipeline/runner.py) and `vaerr
preprocess` (training/preprocess.py) both run, so their rerun semantics cannot drift.

    lock ROOT -> list the inputs -> the rows still to do (status rows read back)
      -> sweep a killed run's temporary files -> config.yaml -> begin (the job's own files)
      -> stages with progress -> end -> summary (pending noted) -> the record (JSON)

A job says what differs (its inputs, status rows, stages, sink, summary and record) by
overriding the hooks of `ResumableJob`; the order and the storage calls are here only.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.outlock import output_lock
from pipeline.progress import Progress
from pipeline.record import utc_now, write_record
from pipeline.scheduling import StageSpec, run_stages
from pipeline.status import note_pending, plan_pending
from pipeline.storage import Storage
from schemas.config import VaerrConfig, config_yaml


class ResumableJob(ABC):
    """A job over videos whose every input ends as one status row under `root`, resumable by
    rerunning it: done videos (status rows matching `version`, final) are skipped.

    Subclasses set `command` ("infer", "preprocess": the lock's holder, the progress label),
    `version` (the status-row fields a done video must match), `config_uri`, `record_uri`,
    and implement the abstract hooks."""

    command: str
    version: Mapping[str, str]
    config_uri: str
    record_uri: str

    def __init__(
        self, cfg: VaerrConfig, root: str, started: tuple[float, str] | None = None
    ) -> None:
        """`started`: (time.perf_counter(), utc_now()) when the command began, before the work
        that precedes the job (loading a checkpoint, reading a dataset); default now."""
        self.cfg, self.root = cfg, root
        self.store = Storage(cfg.storage)  # made once, passed down: its verbs retry outages
        self.t0, self.started = started or (time.perf_counter(), utc_now())
        self.runner, self.address = "ray", None

    # -- what each job says ---------------------------------------------------------------

    @abstractmethod
    def list_rows(self) -> list[dict[str, Any]]:
        """The job's input rows, one per video (video_id, uri, source_etag, ...)."""

    @abstractmethod
    def read_done(self) -> pa.Table:
        """Every status row under the root (a storage outage raises: retried by the caller)."""

    @abstractmethod
    def stages(self) -> list[StageSpec]:
        """The stages the pending rows run through."""

    @abstractmethod
    def sink(self, bar: Progress) -> Callable[[dict[str, np.ndarray]], None]:
        """What receives the last stage's batches (and ticks `bar` per finished video)."""

    @abstractmethod
    def summary(self, rows: list[dict[str, Any]], todo: list[dict[str, Any]]) -> dict[str, Any]:
        """The run's counts once the stages ended (wall time from `self.t0`)."""

    @abstractmethod
    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The JSON record written to `record_uri` at the end."""

    def begin(
        self, rows: list[dict[str, Any]], todo: list[dict[str, Any]], tried: dict[str, int]
    ) -> None:
        """Before the stages, under the lock: the job's own files (default: none). `tried`:
        video_id -> runs that already tried it."""
        return None

    def items(self, todo: list[dict[str, Any]], tried: dict[str, int]) -> list[dict[str, Any]]:
        """The stage input rows of the pending rows (default: the rows as listed)."""
        return todo

    def end(self) -> None:
        """After the stages returned: checks that they finished everything (default: none)."""
        return None

    def failed(self, exc: BaseException) -> None:
        """`begin`, the stages or `end` raised `exc` (re-raised after this; default: nothing)."""
        return None

    # -- the skeleton ---------------------------------------------------------------------

    def run(
        self,
        force: bool = False,
        runner: str = "ray",
        address: str | None = None,
        ray_init: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the job (one writer per root: a second at once is refused by the lock) and
        return its summary, also written into the record."""
        self.runner, self.address = runner, address
        with output_lock(self.root, self.cfg.storage, f"vaerr {self.command}"):
            rows = self.list_rows()
            todo, tried = plan_pending(rows, self.read_done, self.version, force,
                                       self.cfg.infer.max_attempts, self.store)  # fmt: skip
            # Temporary files of writes an earlier run never finished (killed, a full disk):
            # ours to remove, since the lock says no other job writes here.
            self.store.sweep_temp(self.root)
            self.store.write_text(self.config_uri, config_yaml(self.cfg))
            try:
                self.begin(rows, todo, tried)
                with Progress(self.command, len(todo)) as bar:
                    run_stages(self.items(todo, tried), self.stages(), self.sink(bar), runner,
                               address=address, ray_init=ray_init)  # fmt: skip
                self.end()
            except BaseException as exc:
                self.failed(exc)
                raise
            summary = self.summary(rows, todo)
            note_pending(summary)
            write_record(self.record_uri, self.record(summary), self.store)
        return summary
