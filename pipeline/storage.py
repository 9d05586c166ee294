"""The one module that owns URIs: local paths, file://, s3://, gs://, memory://, http(s)://.

Everything else in vaerr asks this module whether a URI is local, joins and opens URIs, lists
and removes files, and writes outputs; nothing else tests a string for "://" or builds an
fsspec filesystem (tests/test_layout.py checks). Retries of transient faults are the policy in
`pipeline.retry`, wrapped around these calls by whoever owns the budget.

Filesystems come from `StorageConfig` (or, where a caller already holds them, a dict of fsspec
keyword arguments). Credentials come from the config or the standard AWS environment
variables; they are passed to the filesystem only and never logged or written to outputs.

Writes are atomic per file: a hidden temporary name is written, then renamed, so a reader
never sees a partial file and a failed or discarded write never appears. On object stores (S3,
GCS...) closing a file commits it, so the temporary name is a real key: the block writes
`.NAME.tmp-XXXX` beside the final key, which is copied to its name only when the block succeeds
(a server-side copy: the final key appears whole or not at all). On failure the upload is
discarded (S3's multipart upload aborted) and the temporary key removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlparse

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.config import StorageConfig
from schemas.tables import conform

log = logging.getLogger(__name__)

# What filesystem calls accept: the run's StorageConfig, a dict of fsspec keyword arguments
# (checkpoint and weight readers are handed one), or None (local files, anonymous defaults).
Options = StorageConfig | Mapping[str, Any] | None


# ---------------------------------------------------------------------------------------------
# What a URI is


def protocol(uri: str) -> str:
    """'s3', 'gs', 'file'... of a URI; plain paths are 'file'."""
    scheme = urlparse(str(uri)).scheme
    return scheme if len(scheme) > 1 else "file"  # 'C:' style drive letters are local


def is_remote(uri: str) -> bool:
    """True for anything not on the local filesystem (s3://, gs://, memory://, http(s)://...)."""
    return protocol(uri) != "file"


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    return not is_remote(uri)


def is_plain_path(uri: str) -> bool:
    """A local path written without a scheme (`out/x`, `/data/x`; not `file:///data/x`)."""
    uri = str(uri)
    return is_local(uri) and "://" not in uri


def without_scheme(uri: str) -> str:
    """The URI without `scheme://` (`bucket/key` for object stores, the path for local)."""
    return str(uri).split("://", 1)[-1]


def local_path(uri: str | os.PathLike) -> Path:
    """The local Path of a plain path or file:// URI (`~` expanded); ValueError when remote."""
    uri = os.fspath(uri)
    if is_remote(uri):
        raise ValueError(f"{uri} is not a local path")
    return Path(uri.removeprefix("file://")).expanduser()


def absolute(uri: str) -> str:
    """Plain local paths made absolute (Ray workers run in their own working directory);
    file:// and remote URIs unchanged."""
    return str(Path(uri).expanduser().resolve()) if is_plain_path(uri) else uri


def as_uri(path: str, like: str) -> str:
    """A filesystem path (as fsspec lists it) written back as a URI of the same kind as `like`:
    a plain path when `like` is one, else `scheme://path`."""
    return path if is_plain_path(like) else f"{protocol(like)}://{path}"


def file_uri(path: str | os.PathLike) -> str:
    """`file:///abs/path` (percent-quoted) of a local path, for a browser's `src`."""
    return "file://" + quote(os.path.abspath(os.fspath(path)))


def basename(uri: str) -> str:
    """The last name on a URI's path, without query or fragment (`s3://b/k/x.pt?v=2` -> x.pt)."""
    if is_local(uri):
        return Path(without_scheme(uri)).name
    return PurePosixPath(urlparse(uri).path).name


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


# ---------------------------------------------------------------------------------------------
# Filesystems


def storage_options(cfg: StorageConfig | None, uri: str) -> dict[str, Any]:
    """fsspec keyword arguments for `uri` under `cfg` (empty for local files)."""
    if protocol(uri) not in ("s3", "s3a") or cfg is None:
        return {}
    opts: dict[str, Any] = {"anon": cfg.anon}
    endpoint = (
        cfg.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = cfg.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    if cfg.key is not None:
        opts["key"] = cfg.key.get_secret_value()
    if cfg.secret is not None:
        opts["secret"] = cfg.secret.get_secret_value()
    opts["default_block_size"] = cfg.block_size_mb << 20
    # Fail fast at the client; outages are retried by pipeline.retry within storage.retry_s.
    opts["config_kwargs"] = {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    return opts


def _options(cfg: Options, uri: str) -> dict[str, Any]:
    if cfg is None or isinstance(cfg, StorageConfig):
        return storage_options(cfg, uri)
    return dict(cfg)


# s3fs retries each call 5 times itself, and again around every ranged read inside that, with
# botocore's attempts inside each: 50 tries (about 40 s) before a dead endpoint is reported.
# Two tries per layer ride out one dropped connection; outages are pipeline.retry's to wait out.
S3FS_RETRIES = 2


def filesystem(uri: str, cfg: Options = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    fs, path = fsspec.core.url_to_fs(str(uri), **_options(cfg, str(uri)))
    if protocol(uri) in ("s3", "s3a"):
        fs.retries = S3FS_RETRIES  # an instance attribute: s3fs takes no such argument
    return fs, path


def arrow_filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[str, Any]:
    """(path, pyarrow filesystem) for libraries that take a pyarrow filesystem (Ray Train's
    RunConfig): object stores go through fsspec with the config's endpoint and credentials,
    like every other vaerr write; local paths give (uri, None), pyarrow's own local files."""
    if protocol(uri) not in ("s3", "s3a"):
        return uri, None
    import pyarrow.fs as pafs

    fs, _ = filesystem(uri, cfg)
    return without_scheme(uri), pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def open_uri(uri: str, mode: str = "rb", cfg: Options = None) -> Any:
    """Open a URI as a file object (a context manager); remote reads are block-cached."""
    fs, path = filesystem(uri, cfg)
    return fs.open(path, mode)


def read_bytes(uri: str, cfg: Options = None) -> bytes:
    """The whole content of a file."""
    with open_uri(uri, "rb", cfg) as f:
        return f.read()


def read_text(uri: str, cfg: Options = None) -> str:
    """A UTF-8 text file (a byte-order mark dropped)."""
    return read_bytes(uri, cfg).decode("utf-8-sig")


def exists(uri: str, cfg: Options = None) -> bool:
    """Whether a file or folder is at `uri`."""
    fs, path = filesystem(uri, cfg)
    return bool(fs.exists(path))


def remove(uri: str, cfg: Options = None, recursive: bool = False) -> None:
    """Delete `uri` (a folder too with `recursive`); a missing one is not an error."""
    fs, path = filesystem(uri, cfg)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def find(root: str, cfg: Options = None) -> list[str]:
    """Every file under `root` as URIs of the same kind as `root`, sorted; [root] for a file;
    FileNotFoundError when nothing is there."""
    fs, path = filesystem(root, cfg)
    if not fs.exists(path):
        raise FileNotFoundError(f"not found: {root}")
    if fs.isfile(path):
        return [root]
    return sorted(as_uri(p, root) for p in fs.find(path))


def copy(src: str, dst: str, cfg: Options = None) -> None:
    """Copy one file between any two URIs (read whole, written atomically)."""
    data = read_bytes(src, cfg)
    with atomic_write(dst, cfg) as f:
        f.write(data)


def upload_tree(local_dir: str | os.PathLike, uri: str, cfg: Options = None) -> None:
    """Copy every file under `local_dir` to the folder `uri`, keeping relative paths."""
    fs, root = filesystem(uri, cfg)
    root = root.rstrip("/")
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            fs.makedirs(f"{root}/{Path(rel).parent.as_posix()}", exist_ok=True)
            fs.put_file(str(path), f"{root}/{rel}")


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
        tmp = temp_name(path)
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
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
    the file is renamed aside (one renamer wins), compared, and put back if it changed; on S3
    the write is conditional on the ETag that was compared (If-Match)."""
    fs, path = filesystem(uri, storage)
    if is_local(uri):
        path = str(local_path(uri))
        aside = f"{path}.swap-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            same = f.read() == expected
        if not same:
            with contextlib.suppress(OSError):
                os.link(aside, path)  # someone else's content: put it back
        os.unlink(aside)
        return same and create_exclusive(uri, data)
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
