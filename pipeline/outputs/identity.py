"""Which rows of a job belong to a video: by its id and its source version, never its name.

A video's id is the hash of its URI (pipeline.ids); its version is the object's ETag, else
size + mtime, recorded in its status row (`source_etag`). `vaerr render` and `vaerr report`
draw on a video only with rows of ITS id, and check that the source is still the version the
job analysed: two videos with one file name (`talk.mp4` under two folders) are two videos,
and a file replaced since the job ran is another video. A copy kept elsewhere is named
explicitly (`--video-id ID`); its version is not compared (a copy has its own).
"""

from __future__ import annotations

import logging
import posixpath
import re
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.ids import video_id as video_id_of
from pipeline.manifest import list_inputs
from pipeline.outpaths import TIMELINES_DIR, OutPaths
from pipeline.storage import absolute, basename, open_uri
from schemas.config import StorageConfig

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[0-9a-f]{16}")
"""A video id as vaerr makes it (16 hex digits); nothing else names a file under OUT."""


class VideoMatch(NamedTuple):
    """A video's timeline rows, its id, its status row (None when not found) and whether the
    source is known to be the version the job analysed (False: unknown or a named copy)."""

    rows: pa.Table
    video_id: str
    status: dict[str, Any] | None
    version_checked: bool


def source_version(uri: str, storage: StorageConfig | None = None) -> str | None:
    """The source version of `uri` now, as `vaerr infer` records it; None when unknown."""
    try:
        table = list_inputs([uri], storage)
    except (OSError, ValueError) as exc:
        log.warning("%s: source version unknown: %s", uri, exc)
        return None
    rows = [r for r in table.to_pylist() if r["uri"] == uri]
    return rows[0]["source_etag"] if rows else None


def out_root(timelines: str) -> str | None:
    """The job's OUT of TIMELINES (OUT, OUT/timelines or one file in it); None for a file
    elsewhere (no status rows to read)."""
    t = str(timelines).rstrip("/")
    if t.endswith(".parquet"):
        t = posixpath.dirname(t)
        if basename(t) != TIMELINES_DIR:
            return None
    return posixpath.dirname(t) if basename(t) == TIMELINES_DIR else t


def status_row(out: str | None, vid: str, storage: StorageConfig | None) -> dict[str, Any] | None:
    """OUT/videos/<vid>.parquet's row, None when there is none (or `vid` is not an id)."""
    if out is None or not ID_RE.fullmatch(vid):
        return None
    try:
        with open_uri(OutPaths(out).status(vid), "rb", storage) as f:
            rows = pq.read_table(f).to_pylist()
    except FileNotFoundError:
        return None
    return rows[0] if rows else None


def same_version(uri: str, status: dict[str, Any] | None, storage: StorageConfig | None) -> bool:
    """True only when the status row's source version is known and `uri` is that version now."""
    recorded = None if status is None else status.get("source_etag")
    return bool(recorded) and source_version(uri, storage) == recorded


def _pairs(dataset: ds.Dataset) -> list[tuple[str, str]]:
    t = dataset.to_table(columns=["video_id", "uri"]).group_by(["video_id", "uri"]).aggregate([])
    return list(zip(t["video_id"].to_pylist(), t["uri"].to_pylist()))


def _rows(dataset: ds.Dataset, vid: str, uri: str | None = None) -> pa.Table:
    flt = pc.field("video_id") == vid
    if uri is not None:
        flt = flt & (pc.field("uri") == uri)
    return dataset.to_table(filter=flt)


def _no_rows(video_uri: str, ids: list[str], timelines: str, dataset: ds.Dataset) -> ValueError:
    """The error for a video without rows: naming the videos that only share its file name."""
    name = basename(video_uri)
    same_name = [(v, u) for v, u in _pairs(dataset) if u and basename(u) == name]
    if not same_name:
        return ValueError(f"no timeline rows for {video_uri} (id {ids[0]}) in {timelines}")
    v, u = sorted(same_name, key=lambda p: p[1])[0]
    more = f" (and {len(same_name) - 1} more)" if len(same_name) > 1 else ""
    return ValueError(
        f"{video_uri} (id {ids[0]}) has no timeline rows of its own; only its file name matches "
        f"{u} (id {v}){more}, another video. If it is a copy of that one, name it: --video-id {v}"
    )


def find_video(
    video_uri: str,
    timelines: str,
    dataset: ds.Dataset,
    storage: StorageConfig | None = None,
    named: str | None = None,
) -> VideoMatch:
    """The rows of `video_uri` in `dataset` (TIMELINES at `timelines`): those of the id of its
    URI (as given, or made absolute), or of `named` (a video id or the exact URI the job saw:
    the video is a copy of that one). ValueError when there are none (naming the videos that
    share only its file name) or when the source changed since the job analysed it."""
    out = out_root(timelines)
    if named is not None:
        rows = _rows(dataset, named)
        if rows.num_rows == 0:
            rows = dataset.to_table(filter=pc.field("uri") == named)
        if rows.num_rows == 0:
            raise ValueError(f"--video-id {named}: no such video in {timelines}")
        vid = rows["video_id"][0].as_py()
        log.info(
            "%s: drawing the rows of %s as asked (a copy: version not compared)", video_uri, vid
        )
        return VideoMatch(rows, vid, status_row(out, vid, storage), False)
    uris = list(dict.fromkeys([video_uri, absolute(video_uri)]))
    for uri in uris:
        rows = _rows(dataset, video_id_of(uri), uri)
        if rows.num_rows:
            break
    else:
        raise _no_rows(video_uri, [video_id_of(u) for u in uris], timelines, dataset)
    vid = video_id_of(uri)
    status = status_row(out, vid, storage)
    recorded = None if status is None else status.get("source_etag")
    now = source_version(video_uri, storage) if recorded else None
    if recorded and now and now != recorded:
        raise ValueError(
            f"{video_uri} changed since the job analysed it (version {recorded}, now {now}): "
            "its rows would be drawn on other frames; rerun `vaerr infer` on it (or, if it is "
            f"the same video re-encoded, name it: --video-id {vid})"
        )
    return VideoMatch(rows, vid, status, bool(recorded) and now == recorded)
