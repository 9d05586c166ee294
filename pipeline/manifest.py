"""Inputs -> manifest: one row per video with a stable id and a source version.

INPUT may be a local file or folder, a glob, any fsspec URI or prefix (s3://bucket/prefix),
or a Parquet manifest with a `uri` column. Folders and prefixes are listed recursively and
filtered by extension; files named explicitly are always kept (a bad one gets a status row).
The source version is the object's ETag, else size + mtime: a rerun skips a video only if this
is unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ids import video_id
from pipeline.storage import filesystem, protocol
from schemas.config import InferConfig, StorageConfig

log = logging.getLogger(__name__)

MANIFEST = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("source_etag", pa.string()),
    ]
)


def _uri(fs: Any, path: str, original: str) -> str:
    proto = protocol(original)
    return path if proto == "file" and "://" not in original else f"{proto}://{path}"


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
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=["uri"])
            for uri in table.column("uri").to_pylist():
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
                if info.get("type") == "file":
                    rows.setdefault(_uri(fs, p, item), _entry(_uri(fs, p, item), info))
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
                    rows.setdefault(_uri(fs, p, item), _entry(_uri(fs, p, item), finfo))
        else:
            rows.setdefault(item, _entry(item, info))
    ordered = [rows[k] for k in sorted(rows)]
    return pa.Table.from_pylist(ordered, schema=MANIFEST)
