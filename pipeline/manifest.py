"""Inputs -> manifest: one row per video with a stable id and a source version.

INPUT may be a local file or folder, a glob, any fsspec URI or prefix (s3://bucket/prefix),
or a Parquet manifest with a string `uri` column (no nulls). Folders and prefixes are listed
recursively and filtered by extension; files named explicitly are always kept (a bad one gets a
status row), and so are dangling or looping symlinks, from folders and globs alike. The source
version is the object's ETag, else size + mtime: a rerun skips a video only if this is
unchanged. Ids come from the URI as given: one local file reached by two paths (a symlink, `..`)
gets two ids and is processed twice; give one path per file.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ids import video_id
from pipeline.storage import as_uri, filesystem
from schemas.config import InferConfig, StorageConfig
from schemas.tables import MANIFEST

log = logging.getLogger(__name__)


def _version(info: dict[str, Any]) -> str | None:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if info.get("size") is None and mtime is None:
        return None
    return f"{info.get('size')}-{mtime}"


def _entry(uri: str, info: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "video_id": video_id(uri),
        "uri": uri,
        "size": None if info is None else info.get("size"),
        "source_etag": None if info is None else _version(info),
    }


def manifest_uris(fs: Any, path: str, name: str) -> list[str]:
    """The `uri` column of a Parquet manifest: ValueError naming the manifest when it is not
    Parquet, has no `uri` column, or holds anything but non-empty strings (nulls, numbers)."""
    how = "a manifest is a Parquet file with a string column `uri`, one row per video"
    try:
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
            if "uri" not in schema.names:
                raise ValueError(f"manifest {name} has no `uri` column: {how}")
            col = pq.read_table(f, columns=["uri"]).column("uri")
    except pa.ArrowException as exc:
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


def list_inputs(
    inputs: list[str], storage: StorageConfig | None = None, infer: InferConfig | None = None
) -> pa.Table:
    """Expand INPUTs into a manifest table (schema MANIFEST), deduplicated by URI, sorted.

    A path that does not exist is kept (it becomes a `failed` status row, not a crash); a
    bucket that cannot be listed raises, since the run itself cannot know its inputs.
    """
    exts = tuple((infer or InferConfig()).video_extensions)
    rows: dict[str, dict[str, Any]] = {}
    for item in inputs:
        fs, path = filesystem(item, storage)
        if item.endswith(".parquet") and fs.isfile(path):
            for uri in manifest_uris(fs, path, item):
                ufs, upath = filesystem(uri, storage)
                try:
                    info = ufs.info(upath)
                except (FileNotFoundError, PermissionError, OSError):
                    info = None
                rows.setdefault(uri, _entry(uri, info))
            continue
        if any(ch in path for ch in "*?["):
            matches = fs.glob(path, detail=True)
            for p, info in sorted(matches.items()):
                # Like folder listings, dangling and looping symlinks (type "other") are kept:
                # each gets a `failed` status row instead of vanishing silently.
                if info.get("type") != "directory":
                    rows.setdefault(as_uri(p, item), _entry(as_uri(p, item), info))
            continue
        try:
            info = fs.info(path)
        except (FileNotFoundError, PermissionError) as exc:
            # Kept: the face stage gives it a `failed` status row with the reason.
            log.warning("input %s: %s", item, type(exc).__name__)
            rows.setdefault(item, _entry(item, None))
            continue
        if info.get("type") == "directory":
            for p, finfo in sorted(fs.find(path, detail=True).items()):
                if p.lower().endswith(exts):
                    rows.setdefault(as_uri(p, item), _entry(as_uri(p, item), finfo))
        else:
            rows.setdefault(item, _entry(item, info))
    ordered = [rows[k] for k in sorted(rows)]
    return pa.Table.from_pylist(ordered, schema=MANIFEST)
