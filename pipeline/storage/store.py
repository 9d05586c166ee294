"""`Storage`: a job's storage as one object, made once from `cfg.storage` and passed down.

Every verb retries transient faults (an endpoint briefly unreachable, a dropped connection)
with backoff within `storage.retry_s` seconds, then raises StorageUnavailable; a fault that is
not transient (missing object, access denied, corrupt file) fails at once. Retrying lives here
and nowhere else (tests/test_layout.py checks): callers say what they do, not how often to try.

The plain module functions (`write_parquet(uri, table, storage)`, ...) stay the one-try layer
this object is built on: they are what a single attempt runs, and what code that owns no retry
budget (a reader that warns and skips, a test) calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from pipeline.storage.atomic import sweep_temp, write_parquet, write_text
from pipeline.storage.files import remove
from pipeline.storage.retry import Backoff
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

    def stream(self, make: Callable[[], Iterator[T]], what: str) -> Iterator[T]:
        """The items of `make()` (a video read from storage), the stream made again and read
        from its start on a transient fault: items already yielded are yielded again (the
        consumer de-duplicates)."""
        backoff = Backoff(self.cfg.retry_s, what)
        while True:
            try:
                yield from make()
                return
            except Exception as exc:
                backoff.wait(exc)

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
