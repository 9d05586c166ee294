"""Reading, listing and removing files at any URI: the verbs the rest of vaerr uses instead of
a filesystem (tests/test_layout.py checks that no module outside pipeline/storage/ gets one)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.atomic import atomic_write, local_output
from pipeline.storage.retry import is_transient
from pipeline.storage.uris import Options, as_uri, filesystem, protocol
from schemas.tables import conform

log = logging.getLogger(__name__)


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


def download(uri: str, dest: str | os.PathLike, cfg: Options = None) -> None:
    """Copy the file at `uri` (an http(s) URL, read with the standard library as any browser
    would, or any fsspec URI) to the local path `dest`, streamed and atomically: `dest`
    appears whole or not at all (weights and templates into the cache, pipeline.weights)."""
    with local_output(str(dest)) as tmp, open(tmp, "wb") as f:
        if protocol(uri) in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=60) as r:
                shutil.copyfileobj(r, f)
        else:
            with open_uri(uri, "rb", cfg) as r:
                shutil.copyfileobj(r, f)


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
# Listing and reading tables: one policy for a file that cannot be read


def is_file(uri: str, cfg: Options = None) -> bool:
    """Whether a file (not a folder) is at `uri`."""
    fs, path = filesystem(uri, cfg)
    return bool(fs.isfile(path))


def is_dir(uri: str, cfg: Options = None) -> bool:
    """Whether a folder (or, on object stores, a prefix with keys under it) is at `uri`."""
    fs, path = filesystem(uri, cfg)
    return bool(fs.isdir(path))


def file_info(uri: str, cfg: Options = None) -> dict[str, Any]:
    """What the store says of `uri` (fsspec's info: type, size...); FileNotFoundError or
    PermissionError when it cannot."""
    fs, path = filesystem(uri, cfg)
    return dict(fs.info(path))


def version_of(info: dict[str, Any]) -> str | None:
    """A file's version from its info (file_info, find_detail): the ETag where the store gives
    one, else "size-mtime"; None when the store says neither. A rewritten file gets a new one."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if info.get("size") is None and mtime is None:
        return None
    return f"{info.get('size')}-{mtime}"


def find_detail(root: str, cfg: Options = None) -> list[tuple[str, dict[str, Any]]]:
    """(URI of the same kind as `root`, info) of every file under the folder `root`, sorted."""
    fs, path = filesystem(root, cfg)
    return [(as_uri(p, root), dict(i)) for p, i in sorted(fs.find(path, detail=True).items())]


def glob_detail(pattern: str, cfg: Options = None) -> list[tuple[str, dict[str, Any]]]:
    """(URI, info) of every entry a pattern (`*`, `?`, `[...]`) matches, sorted."""
    fs, path = filesystem(pattern, cfg)
    return [(as_uri(p, pattern), dict(i)) for p, i in sorted(fs.glob(path, detail=True).items())]


def _hidden(rel: str) -> bool:
    """A path below a listed folder with a name starting with "." or "_" (a write in progress,
    `.x.parquet.tmp-*`; what Parquet dataset readers skip too). Only the part below the folder
    counts: a folder of its own under `.cache/` or `_work/` is listed as usual."""
    return any(part.startswith((".", "_")) for part in rel.strip("/").split("/"))


def list_files(root: str, cfg: Options = None, suffix: str = "") -> list[str]:
    """URIs of the files under the folder `root` whose names end with `suffix`, sorted, hidden
    names (`_hidden`) skipped; [] when nothing is at `root`."""
    fs, path = filesystem(root, cfg)
    if not fs.exists(path):
        return []
    base = len(path.rstrip("/"))  # the store's own paths: a relative root is absolute there
    found = [p for p in fs.find(path) if p.endswith(suffix) and not _hidden(p[base:])]
    return sorted(as_uri(p, root) for p in found)


def read_json(uri: str, cfg: Options = None) -> Any:
    """The JSON document at `uri`; None when nothing is there (a malformed one raises)."""
    try:
        return json.loads(read_bytes(uri, cfg).decode("utf-8-sig"))
    except FileNotFoundError:
        return None


def read_jsonl(uri: str, cfg: Options = None) -> list[Any]:
    """The records of a JSON-lines file (blank lines skipped); [] when nothing is there."""
    try:
        text = read_bytes(uri, cfg).decode("utf-8-sig")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_parquet(
    uri: str,
    cfg: Options = None,
    columns: list[str] | None = None,
    filters: list[tuple] | None = None,
) -> pa.Table:
    """One Parquet file (only `columns`; only row groups and rows passing `filters`, in
    pyarrow's filter syntax)."""
    if filters is None:
        with open_uri(uri, "rb", cfg) as f:
            return pq.read_table(f, columns=columns)
    fs, path = filesystem(uri, cfg)
    return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)


def read_parquet_schema(uri: str, cfg: Options = None) -> pa.Schema:
    """A Parquet file's schema, from its footer."""
    with open_uri(uri, "rb", cfg) as f:
        return pq.read_schema(f)


Unreadable = Callable[[str, Exception], None]
"""What a reader does with a file it cannot read (its URI, the error): warn, or record a
violation (`vaerr verify`). Transient storage errors are never handed to it: they raise, so an
outage is retried instead of making every file look absent."""


def warn_unreadable(uri: str, exc: Exception) -> None:
    """The readers' policy: skip the file with a warning naming it."""
    log.warning("%s unreadable (%s): skipped", uri, type(exc).__name__)


def iter_tables(
    root: str, cfg: Options = None, on_unreadable: Unreadable = warn_unreadable
) -> Iterator[tuple[str, pa.Table]]:
    """(URI, table as written) of each Parquet file under the folder `root` (hidden names
    skipped), or of `root` itself when it is one file; a file that cannot be read goes to
    `on_unreadable` and is skipped."""
    single = root.endswith(".parquet") and is_file(root, cfg)
    for uri in [root] if single else list_files(root, cfg, ".parquet"):
        try:
            table = read_parquet(uri, cfg)
        except Exception as exc:
            if is_transient(exc):
                raise
            on_unreadable(uri, exc)
            continue
        yield uri, table


def read_tables(
    root: str,
    schema: pa.Schema,
    cfg: Options = None,
    fill_missing: tuple[str, ...] = (),
    on_unreadable: Unreadable = warn_unreadable,
) -> pa.Table:
    """Every Parquet file under the folder `root` as one table of `schema` (columns a file
    lacks and `fill_missing` names are null there: files written before they existed); an
    empty table when there are none. A file that cannot be read, or lacks other columns, goes
    to `on_unreadable`."""
    tables = []
    for uri, t in iter_tables(root, cfg, on_unreadable):
        try:
            tables.append(conform(t, schema, fill_missing))
        except (ValueError, pa.ArrowException) as exc:  # columns missing or of another type
            on_unreadable(uri, exc)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def parquet_dataset(uris: list[str], cfg: Options = None, schema: pa.Schema | None = None) -> Any:
    """A pyarrow dataset over Parquet files of one store (`uris` all of the same kind): for
    readers that push column selection and filters down to the files."""
    import pyarrow.dataset as ds

    if not uris:
        raise ValueError("a dataset needs at least one file")
    fs, _ = filesystem(uris[0], cfg)
    paths = [filesystem(u, cfg)[1] for u in uris]
    return ds.dataset(paths, schema=schema, filesystem=fs, format="parquet")
