"""Atomic writes (a hidden temporary name renamed when whole), the sweep of temporary names
a killed writer left, exclusive creation and compare-and-swap (the output lock)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.uris import (
    Options,
    basename,
    filesystem,
    is_local,
    is_remote,
    local_path,
    protocol,
)
from schemas.config import StorageConfig
from schemas.tables import conform

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Atomic writes


def temp_name(path: str) -> str:
    """A hidden sibling of `path`: Parquet dataset readers skip names starting with "." or "_",
    so a file left by a killed writer is never read as data."""
    parent, _, name = path.rpartition("/")
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{tmp}" if parent or path.startswith("/") else tmp


TEMP_PATTERN = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")  # what temp_name makes, and nothing else


def _discard(f: Any) -> None:
    """Throw away an unfinished write: abort the multipart upload (fsspec's `discard`) and mark
    the file closed, so neither `close()` nor garbage collection commits what was written.
    Never raises: closing a local file flushes its buffer, which fails again on a full disk
    (ENOSPC), and the caller must still remove the temporary name."""
    try:
        f.discard()
    except Exception as exc:  # best effort: the temporary key is removed below anyway
        log.debug("discard failed: %s", type(exc).__name__)
    if hasattr(f, "buffer") and hasattr(f, "commit"):  # fsspec's buffered remote files
        f.closed = True
        return
    try:
        f.close()  # local files: closing only flushes the temporary name, removed next
    except Exception as exc:
        log.debug("closing a discarded write failed: %s", type(exc).__name__)
        raw = getattr(f, "f", None)  # fsspec's LocalFileOpener wraps the real file
        with contextlib.suppress(Exception):
            (raw or f).close()  # a failed flush leaves the descriptor open: release it


@contextlib.contextmanager
def atomic_write(uri: str, storage: Options = None) -> Iterator[Any]:
    """Open `uri` for binary writing; it appears under its name only if the block succeeds.

    Any filesystem: the block writes a hidden temporary name (`.NAME.tmp-XXXXXXXX`, see
    TEMP_PATTERN) that is renamed (local: an atomic rename; object stores: copy then delete)
    on success and removed on failure, a full disk included (ENOSPC on write or close)."""
    fs, path = filesystem(uri, storage)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = temp_name(path)
    f = fs.open(tmp, "wb")
    try:
        yield f
    except BaseException:
        try:
            _discard(f)
        finally:
            _remove(fs, tmp)
        raise
    try:
        f.close()  # object stores: the temporary key is committed here
        fs.mv(tmp, path)
    except BaseException:
        try:
            if not f.closed:  # a close that failed (ENOSPC) may have left the descriptor open
                _discard(f)
        finally:
            _remove(fs, tmp)
        raise


def _remove(fs: Any, path: str) -> None:
    """Delete `path` if it exists; never raises (the caller is already failing)."""
    try:
        if fs.exists(path):
            fs.rm(path)
    except Exception as exc:
        log.warning("could not remove the temporary file %s (%s)", path, type(exc).__name__)


def sweep_temp(root: str, storage: Options = None) -> int:
    """Remove the temporary files (TEMP_PATTERN) a killed writer left anywhere under `root`;
    returns how many. Only for a folder one run owns at a time (a run's OUT): another writer's
    unfinished temporary file would go too."""
    fs, path = filesystem(root, storage)
    if not fs.exists(path):
        return 0
    stray = [p for p in fs.find(path) if TEMP_PATTERN.match(p.rsplit("/", 1)[-1])]
    for p in stray:
        _remove(fs, p)
    if stray:
        log.info(
            "removed %d temporary files left by an interrupted write under %s", len(stray), root
        )
    return len(stray)


def write_bytes(uri: str, data: bytes, storage: Options = None) -> None:
    """Write a file atomically."""
    with atomic_write(uri, storage) as f:
        f.write(data)


def write_text(uri: str, text: str, storage: Options = None) -> None:
    """Write a small text file atomically."""
    write_bytes(uri, text.encode("utf-8"), storage)


def write_parquet(uri: str, table: pa.Table, storage: Options = None, **options: Any) -> None:
    """Write a Parquet file atomically (zstd; `options` go to pyarrow.parquet.write_table)."""
    with atomic_write(uri, storage) as f:
        pq.write_table(table, f, compression="zstd", **options)


@contextlib.contextmanager
def local_output(uri: str, storage: Options = None) -> Iterator[str]:
    """A local file path to write `uri` through, for libraries that need a real file (PyAV).

    Local: a hidden sibling (`.NAME.tmp-XXXX`), renamed to the name only when the block
    succeeds. Remote: a local temporary file with the same suffix, uploaded (atomically) only
    when the block succeeds. Either way a failed write leaves nothing under the name."""
    if is_local(uri):
        path = os.path.abspath(local_path(uri))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_name(path)
    else:
        fd, tmp = tempfile.mkstemp(suffix=PurePosixPath(basename(uri)).suffix, prefix="vaerr_")
        os.close(fd)
    try:
        yield tmp
        if is_local(uri):
            os.replace(tmp, path)
        else:
            with open(tmp, "rb") as src, atomic_write(uri, storage) as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ParquetStream:
    """Append column batches to one Parquet file, validated against `schema`, committed
    atomically on `close()` (a batch per row group, so memory stays bounded)."""

    def __init__(self, uri: str, schema: pa.Schema, storage: StorageConfig | None = None) -> None:
        self.schema = schema
        self._ctx = atomic_write(uri, storage)
        self._file = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._file, schema, compression="zstd")
        self.rows = 0
        self._closed = False

    def write(self, table: pa.Table) -> None:
        """Append one table (cast to the schema; missing columns raise)."""
        if table.num_rows:
            self._writer.write_table(conform(table, self.schema))
            self.rows += table.num_rows

    def close(self, ok: bool = True) -> None:
        """Finish the file; with ok=False, discard it. A failure (a full disk) discards it
        too: the temporary file never stays behind. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
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
    if is_remote(uri):
        return
    p = local_path(uri)
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


# ---------------------------------------------------------------------------------------------
# Exclusive creation and compare-and-swap (the output lock, pipeline/outlock.py)


def _is_s3(uri: str) -> bool:
    return protocol(uri) in ("s3", "s3a")


def _no_conditional_writes(uri: str) -> None:
    log.warning(
        "the store of %s has no conditional writes: it is checked, then written, so two jobs "
        "at the same moment could both pass",
        uri,
    )


def create_exclusive(uri: str, data: bytes, storage: Options = None) -> bool:
    """Write `data` to `uri` only if nothing is there; False when something is. Atomic:
    locally a complete hidden file hard-linked to the name (the link fails if the name exists);
    on S3 a conditional write (If-None-Match: *); on stores without one, check then write,
    with a warning that says so."""
    fs, path = filesystem(uri, storage)
    if is_local(uri):
        path = str(local_path(uri))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # The lock holder's sweep_temp may remove our temporary file between its write and
        # the link (a job that lost the race for OUT's lock): then write it again.
        for attempt in range(3):
            tmp = temp_name(path)
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                if attempt == 2:
                    raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    if _is_s3(uri):
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # S3-compatible servers without it answer 501 (ENOSYS)
            if exc.errno != errno.ENOSYS:
                raise
    _no_conditional_writes(uri)
    fs.invalidate_cache(path)
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


def swap_if(uri: str, expected: bytes, data: bytes, storage: Options = None) -> bool:
    """Replace the content of `uri` by `data` only if it is still `expected` (another writer
    may have changed it since it was read); False otherwise, and when `uri` is gone. Locally
    the compare and an atomic replace happen under an exclusive flock of the file's folder
    (one swapper at a time on this host), and the file is never absent meanwhile, so an
    exclusive creation cannot slip in (it once could: the file was renamed aside, compared and
    put back, and a third job created the lock in that gap: two winners); on S3 the write is
    conditional on the ETag that was compared (If-Match)."""
    if is_local(uri):
        return _swap_local(str(local_path(uri)), expected, data)
    fs, path = filesystem(uri, storage)
    fs.invalidate_cache(path)  # another process may have written it: never a cached listing
    try:
        etag = fs.info(path).get("ETag")
        current = fs.cat_file(path)
    except FileNotFoundError:
        return False
    if current != expected:
        return False
    if _is_s3(uri) and etag:
        bucket, key, _ = fs.split_path(path)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
        except FileNotFoundError:
            return False
        except OSError as exc:  # PreconditionFailed (If-Match): changed meanwhile
            if exc.errno == errno.EINVAL:
                return False
            if exc.errno != errno.ENOSYS:  # 501: no conditional writes; else a real error
                raise
        else:
            fs.invalidate_cache(path)
            return True
    _no_conditional_writes(uri)
    fs.pipe_file(path, data)
    return True


def _swap_local(path: str, expected: bytes, data: bytes) -> bool:
    """swap_if for a local file: compare, then an atomic write (`write_bytes`: a hidden
    sibling renamed over the file), under an exclusive flock of the folder (released when the
    descriptor closes)."""
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            with open(path, "rb") as f:
                if f.read() != expected:
                    return False
        except FileNotFoundError:
            return False
        write_bytes(path, data)
        return True
    finally:
        os.close(folder)
