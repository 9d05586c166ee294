"""Writing outputs to any fsspec URI, atomically per file: write a hidden temporary name, then
rename, so a reader never sees a partial file and a failed or discarded write never appears.

On object stores (S3, GCS...) closing a file commits it, so the temporary name is a real key:
the block writes `.NAME.tmp-XXXX` beside the final key, which is copied to its name only when
the block succeeds (a server-side copy: the final key appears whole or not at all). On failure
the upload is discarded (S3's multipart upload aborted) and the temporary key removed."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import filesystem, protocol
from schemas.config import StorageConfig
from schemas.tables import conform

log = logging.getLogger(__name__)


def temp_name(path: str) -> str:
    """A hidden sibling of `path`: Parquet dataset readers skip names starting with "." or "_",
    so a file left by a killed writer is never read as data."""
    parent, _, name = path.rpartition("/")
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{tmp}" if parent or path.startswith("/") else tmp


def _discard(f: Any) -> None:
    """Throw away an unfinished write: abort the multipart upload (fsspec's `discard`) and mark
    the file closed, so neither `close()` nor garbage collection commits what was written."""
    try:
        f.discard()
    except Exception as exc:  # best effort: the temporary key is removed below anyway
        log.debug("discard failed: %s", type(exc).__name__)
    if hasattr(f, "buffer") and hasattr(f, "commit"):  # fsspec's buffered remote files
        f.closed = True
    else:
        f.close()  # local files: closing only flushes the temporary name, removed next


@contextlib.contextmanager
def atomic_write(uri: str, storage: StorageConfig | None = None) -> Iterator[Any]:
    """Open `uri` for binary writing; it appears under its name only if the block succeeds.

    Any filesystem: the block writes a hidden temporary name that is renamed (local: an atomic
    rename; object stores: copy then delete) on success and removed on failure."""
    fs, path = filesystem(uri, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = temp_name(path)
    f = fs.open(tmp, "wb")
    try:
        yield f
    except BaseException:
        _discard(f)
        _remove(fs, tmp)
        raise
    try:
        f.close()  # object stores: the temporary key is committed here
        fs.mv(tmp, path)
    except BaseException:
        _remove(fs, tmp)
        raise


def _remove(fs: Any, path: str) -> None:
    """Delete `path` if it exists; never raises (the caller is already failing)."""
    try:
        if fs.exists(path):
            fs.rm(path)
    except Exception as exc:
        log.warning("could not remove the temporary file %s (%s)", path, type(exc).__name__)


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


def check_output(uri: str, folder: bool = False) -> None:
    """Before any work: ValueError when a local output path cannot be created because an
    existing part of it is a file (`out.txt/run`), or `uri` itself is a file where a folder is
    wanted (`folder`), or a folder where a file is wanted. Remote URIs pass (object stores
    have no folders; their errors come with the first write)."""
    if protocol(uri) != "file":
        return
    p = Path(uri.removeprefix("file://")).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"output {uri} is a file, not a folder: choose a folder path")
        if not folder and p.is_dir():
            raise ValueError(f"output {uri} is a folder, not a file: give a file name")
        return
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"output {uri} cannot be created: {parent} is a file, not a folder; "
                    "choose another output path"
                )
            return
