"""Writing outputs to any fsspec URI, atomically per file: write a temporary name, then rename,
so a reader never sees a partial file (on S3 an object appears whole on close anyway)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import filesystem
from schemas.config import StorageConfig
from schemas.tables import conform


@contextlib.contextmanager
def atomic_write(uri: str, storage: StorageConfig | None = None) -> Iterator[Any]:
    """Open `uri` for binary writing; it appears under its name only if the block succeeds."""
    fs, path = filesystem(uri, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    protos = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = "file" in protos  # S3 and other object stores commit on close; no rename needed
    # Hidden temporary name: Parquet dataset readers skip names starting with "." or "_",
    # so a file left by a killed writer is never read as data.
    name = path.rsplit("/", 1)[-1]
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if local and parent else path
    try:
        with fs.open(tmp, "wb") as f:
            yield f
        if tmp != path:
            fs.mv(tmp, path)
    except BaseException:
        if tmp != path and fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_text(uri: str, text: str, storage: StorageConfig | None = None) -> None:
    """Write a small text file atomically."""
    with atomic_write(uri, storage) as f:
        f.write(text.encode("utf-8"))


class ParquetStream:
    """Append column batches to one Parquet file, validated against `schema`, committed
    atomically on `close()` (a batch per row group, so memory stays bounded)."""

    def __init__(self, uri: str, schema: pa.Schema, storage: StorageConfig | None = None) -> None:
        self.schema = schema
        self._ctx = atomic_write(uri, storage)
        self._file = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._file, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Append one table (cast to the schema; missing columns raise)."""
        if table.num_rows:
            self._writer.write_table(conform(table, self.schema))
            self.rows += table.num_rows

    def close(self, ok: bool = True) -> None:
        """Finish the file; with ok=False, discard it."""
        self._writer.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            err = RuntimeError("discarded")
            self._ctx.__exit__(RuntimeError, err, None)
