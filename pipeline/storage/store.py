"""`Storage`: a job's storage as one object, made once from `cfg.storage` and passed down.

Every verb (reads, listings and writes) retries transient faults (an endpoint briefly
unreachable, a dropped connection) with backoff within `storage.retry_s` seconds, then raises
StorageUnavailable; a fault that is not transient (missing object, access denied, corrupt
file) fails at once. Retrying lives here and nowhere else (tests/test_layout.py checks):
callers say what they do, not how often to try. Work made of many storage calls that must be
redone whole (a video decoded from its start) asks for `attempts(what)`: the caller runs each
attempt itself, so no code of a higher layer is called back from here.

The plain module functions (`write_parquet(uri, table, storage)`, ...) stay the one-try layer
this object is built on: they are what a single attempt runs, and what code that owns no retry
budget (a reader that warns and skips, a test) calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import pyarrow as pa

import pipeline.storage.files as files
from pipeline.storage.atomic import sweep_temp, write_parquet, write_text
from pipeline.storage.files import Unreadable, remove, warn_unreadable
from pipeline.storage.retry import Backoff, is_transient
from schemas.config import StorageConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Storage:
    """The job's storage settings (`cfg`) and its retrying verbs.

    `retry_s` (seconds) bounds each verb's retries: 0.5 s doubling, at most 8 s apart."""

    cfg: StorageConfig

    @classmethod
    def of(cls, cfg: StorageConfig | Storage | None) -> Storage:
        """`cfg` as a Storage (one is returned as it is; None is the defaults)."""
        if isinstance(cfg, Storage):
            return cfg
        return cls(cfg if cfg is not None else StorageConfig())

    @property
    def retry_s(self) -> float:
        return self.cfg.retry_s

    def call(self, fn: Callable[[], T], what: str) -> T:
        """`fn()` (a read or listing made of several storage calls, such as reading a folder of
        status rows), retried whole on a transient fault; `what` names it in warnings."""
        backoff = Backoff(self.cfg.retry_s, what)
        while True:
            try:
                return fn()
            except Exception as exc:
                backoff.wait(exc)

    def attempts(self, what: str) -> Iterator[Attempt]:
        """Tries of one piece of work the caller redoes whole (a video read from its start):

            for attempt in store.attempts(uri):
                with attempt:
                    ...  # the work; a transient fault inside ends this try

        A transient fault ends the try and, after the backoff, the next begins; any other
        error, or the budget spent (StorageUnavailable), leaves the `with`; a try that ends
        without error is the last. What a failed try already produced is produced again by
        the next (the consumer de-duplicates)."""
        backoff = Backoff(self.cfg.retry_s, what)
        while True:
            attempt = Attempt(backoff)
            yield attempt
            if attempt.succeeded:
                return

    # -- reads and listings ----------------------------------------------------------------

    def file_info(self, uri: str) -> dict[str, Any]:
        """fsspec's info of a file or folder (FileNotFoundError when absent)."""
        return self.call(lambda: files.file_info(uri, self.cfg), f"reading {uri}")

    def is_file(self, uri: str) -> bool:
        return self.call(lambda: files.is_file(uri, self.cfg), f"reading {uri}")

    def find_detail(self, root: str) -> list[tuple[str, dict[str, Any]]]:
        """(URI, info) of every file under the folder `root`, recursively."""
        return self.call(lambda: files.find_detail(root, self.cfg), f"listing {root}")

    def glob_detail(self, pattern: str) -> list[tuple[str, dict[str, Any]]]:
        """(URI, info) of every path a glob pattern matches."""
        return self.call(lambda: files.glob_detail(pattern, self.cfg), f"listing {pattern}")

    def read_parquet(self, uri: str, **options: Any) -> pa.Table:
        """One Parquet file (`options`: columns, filters)."""
        return self.call(lambda: files.read_parquet(uri, self.cfg, **options), f"reading {uri}")

    def read_parquet_schema(self, uri: str) -> pa.Schema:
        """A Parquet file's schema (its footer only)."""
        return self.call(lambda: files.read_parquet_schema(uri, self.cfg), f"reading {uri}")

    def read_tables(
        self,
        root: str,
        schema: pa.Schema,
        fill_missing: tuple[str, ...] = (),
        on_unreadable: Unreadable = warn_unreadable,
    ) -> pa.Table:
        """Every Parquet file under the folder `root` as one table of `schema`
        (`files.read_tables`: one policy for a file that cannot be read), the folder read
        again whole after a transient fault."""
        return self.call(
            lambda: files.read_tables(root, schema, self.cfg, fill_missing, on_unreadable),
            f"reading {root}",
        )

    def write_parquet(self, uri: str, table: pa.Table, **options: Any) -> None:
        """Write a Parquet file atomically (`options` go to pyarrow.parquet.write_table)."""
        self.call(lambda: write_parquet(uri, table, self.cfg, **options), f"writing {uri}")

    def write_text(self, uri: str, text: str) -> None:
        """Write a small text file (JSON, YAML) atomically."""
        self.call(lambda: write_text(uri, text, self.cfg), f"writing {uri}")

    def remove(self, uri: str) -> None:
        """Delete a file if it exists (a stale result of an earlier run)."""
        self.call(lambda: remove(uri, self.cfg), f"removing {uri}")

    def sweep_temp(self, root: str) -> int:
        """Remove the temporary files a killed writer left under `root` (a folder one job owns
        at a time, under its lock); how many."""
        return self.call(lambda: sweep_temp(root, self.cfg), f"cleaning {root}")


class Attempt:
    """One try of `Storage.attempts`: a context that swallows a transient fault (after the
    backoff's sleep) so that the next try runs, and lets any other error through."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.succeeded = False

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self.succeeded = True
            return False
        if not isinstance(exc, Exception) or not is_transient(exc):
            return False  # not ours to retry: it propagates unchanged
        self.backoff.wait(exc)  # sleeps, or raises StorageUnavailable when the budget is spent
        return True
