"""Inputs -> manifest: one row per video with a stable id and a source version.

INPUT may be a local file or folder, a glob, any fsspec URI or prefix (s3://bucket/prefix),
or a Parquet manifest with a string `uri` column (no nulls). A path that exists is taken as
named, whatever characters it holds (`clip[1].mp4`, `batch[2024]/`, `what?.mp4`); only an
INPUT that does not exist and holds `*`, `?` or `[` is a glob pattern (`glob=False`: never).
Folders and prefixes are listed recursively and filtered by extension; files named explicitly
are always kept (a bad one gets a status row: missing, denied, a FIFO or device), and so are
dangling or looping symlinks, from folders and globs alike; a pattern that matches nothing is
kept like a missing file. No INPUT ever lists zero videos silently: a folder without video
files or an empty manifest is an error. The source version is the object's ETag, else size +
mtime: a rerun skips a video only if this is unchanged. Ids come from the URI as given: one
local file reached by two paths (a symlink, `..`) gets two ids and is processed twice; give
one path per file.

Every listing and read goes through a `Storage` (made once by the job), whose verbs retry
transient faults themselves: a listing is never retried from here."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pipeline.ids import video_id
from pipeline.source import special_kind
from pipeline.storage import Storage, StorageUnavailable, is_transient, version_of
from schemas.config import InferConfig, StorageConfig
from schemas.tables import MANIFEST

log = logging.getLogger(__name__)


def _entry(uri: str, info: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "video_id": video_id(uri),
        "uri": uri,
        "size": None if info is None else info.get("size"),
        "source_etag": None if info is None else version_of(info),
    }


def manifest_uris(name: str, storage: StorageConfig | Storage | None = None) -> list[str]:
    """The `uri` column of a Parquet manifest: ValueError naming the manifest when it is not
    Parquet, has no `uri` column, or holds anything but non-empty strings (nulls, numbers)."""
    how = "a manifest is a Parquet file with a string column `uri`, one row per video"
    store = Storage.of(storage)
    try:
        col = store.read_parquet(name, columns=["uri"]).column("uri")
    except pa.ArrowException as exc:
        # one read when the manifest is sound; its footer again only to say what is wrong
        try:
            lacks_uri = "uri" not in store.read_parquet_schema(name).names
        except pa.ArrowException:
            lacks_uri = False
        if lacks_uri:
            raise ValueError(f"manifest {name} has no `uri` column: {how}") from None
        raise ValueError(f"manifest {name} is not a readable Parquet file ({exc}): {how}") from None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ValueError(f"manifest {name}: column `uri` holds {col.type}, not strings: {how}")
    uris = col.to_pylist()
    bad = [i for i, u in enumerate(uris) if not u or not u.strip()]
    if bad:
        raise ValueError(
            f"manifest {name}: {len(bad)} of {len(uris)} rows have a null or empty `uri` "
            f"(first: row {bad[0]}): {how}"
        )
    return uris


GLOB_CHARS = "*?["


def list_inputs(
    inputs: list[str],
    storage: StorageConfig | Storage | None = None,
    infer: InferConfig | None = None,
    glob: bool = True,
) -> pa.Table:
    """Expand INPUTs into a manifest table (schema MANIFEST), deduplicated by URI, sorted
    (see `expand_inputs`)."""
    return expand_inputs(inputs, storage, infer, glob)[0]


def expand_inputs(
    inputs: list[str],
    storage: StorageConfig | Storage | None = None,
    infer: InferConfig | None = None,
    glob: bool = True,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(manifest table, one record per INPUT: {"input", "kind", "videos"}).

    A path that exists is that file or folder, whatever characters its name holds. Only an
    INPUT that does not exist, holds `*`, `?` or `[` and `glob` is on is a pattern (kind
    "glob"); one that matches no file is kept like a missing path. A missing or denied path
    is kept (kind "missing": it becomes a `failed` status row, not a crash); so is a FIFO,
    socket or device (refused unread when opened: a `failed` row naming the kind). A folder
    without a video file is a ValueError (the run would lose that input silently); a bucket
    that cannot be listed raises, since the run itself cannot know its inputs. `videos`
    counts the URIs the input named, duplicates of other inputs included.
    """
    exts = tuple((infer or InferConfig()).video_extensions)
    store = Storage.of(storage)
    rows: dict[str, dict[str, Any]] = {}
    record: list[dict[str, Any]] = []
    for item in inputs:
        kind, found = _expand_one(item, store, exts, glob)
        for uri, info in found:
            rows.setdefault(uri, _entry(uri, info))
        record.append({"input": item, "kind": kind, "videos": len(found)})
    ordered = [rows[k] for k in sorted(rows)]
    return pa.Table.from_pylist(ordered, schema=MANIFEST), record


def _expand_one(
    item: str, store: Storage, exts: tuple[str, ...], glob: bool
) -> tuple[str, list[tuple[str, dict[str, Any] | None]]]:
    """(kind, [(uri, info or None)]) of one INPUT (see `expand_inputs`)."""
    if item.endswith(".parquet") and store.is_file(item):
        found = []
        for uri in manifest_uris(item, store):
            try:
                found.append((uri, store.file_info(uri)))
            except StorageUnavailable:
                raise  # an outage: the run cannot know its inputs
            except OSError as exc:  # missing, denied, ...: a failed status row
                if is_transient(exc):
                    raise
                found.append((uri, None))
        if not found:
            raise ValueError(f"manifest {item} has no rows: it names no video")
        return "manifest", found
    try:
        meta = store.file_info(item)
    except (FileNotFoundError, PermissionError) as exc:
        if glob and any(ch in item for ch in GLOB_CHARS):
            return "glob", _glob(item, store)
        # Kept: the face stage gives it a `failed` status row with the reason.
        log.warning("input %s: %s", item, type(exc).__name__)
        return "missing", [(item, None)]
    if meta.get("type") != "directory":
        kind = special_kind(item)
        if kind:
            log.warning(
                "input %s: not a regular file (%s): it gets a failed status row", item, kind
            )
        return "file", [(item, meta)]
    found = [(u, m) for u, m in store.find_detail(item) if u.lower().endswith(exts)]
    if not found:
        raise ValueError(
            f"input {item} is a folder without video files ({', '.join(exts)}): check the path, "
            "or set infer.video_extensions"
        )
    return "folder", found


def _glob(item: str, store: Storage) -> list[tuple[str, dict[str, Any] | None]]:
    """The files a pattern matches; none: the pattern itself, kept as a missing input."""
    # Like folder listings, dangling and looping symlinks (type "other") are kept: each gets a
    # `failed` status row instead of vanishing silently.
    found: list[tuple[str, dict[str, Any] | None]] = [
        (u, m) for u, m in store.glob_detail(item) if m.get("type") != "directory"
    ]
    if not found:
        log.warning("input %s: no file by that name, and as a pattern it matches no file", item)
        return [(item, None)]
    return found
