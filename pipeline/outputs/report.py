"""One self-contained HTML page for a finished job (local or remote OUT): `vaerr report`.

The page needs nothing but itself: CSS and the few lines of script are inline, every image is a
base64 PNG in a `data:` URI, nothing is fetched (it opens on an air-gapped laptop). Videos are
the one exception by nature: a `<video>` element points at the source when the source is a
local file or an http(s) URL a browser can play (mp4, webm, ogg, mov); s3:// and other sources
get their URI and the episode times as text.

What it shows, for an analyst reviewing a night's batch:
  1. the run summary: videos by status (and every failure reason, capped), faces, hours of
     video, frames/s of the last run, model id and whether it is untrained, config hash(es);
  2. the top happy episodes and distress spikes across the collection, found with the same
     detectors and defaults as `vaerr query` (pipeline.outputs.events), each with video, time
     and faces, and with `stills=True` a small still of each face at the peak (faces blurred with
     `blur_faces=True`);
  3. per video: `vaerr plot`'s figure (pipeline.outputs.plot: every track, episodes shaded, the
     emotion-word strip) and the video with one link per episode that seeks it.

The cap (ReportOptions): per-video sections for the `max_videos` (40) videos with the highest
scoring episodes (then the rest in URI order), `max_events` (25) episodes of each kind, and
`max_failed` (200) failure rows. The figures are drawn at 72 dpi (about 25-45 KB a video), so
a job of 10,000 videos gives a page of about 2-3 MB whatever its size; everything else is
reached with `vaerr query happy|spikes OUT --output all.csv` and `vaerr plot OUT --video ID`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.outpaths import OutPaths
from pipeline.outputs.caveats import synthetic_only, training_data
from pipeline.outputs.events import COLUMNS, find_happy, find_spikes
from pipeline.outputs.identity import same_version
from pipeline.outputs.query import open_timelines
from pipeline.outputs.report_html import (
    SCRIPT,
    ReportOptions,
    dom_ids,
    event_key,
    page_head,
    render,
    video_html,
)
from pipeline.status import FAILED, NO_FACE, OK
from pipeline.storage import (
    atomic_write,
    file_uri,
    is_plain_path,
    protocol,
    read_json,
    read_tables,
    without_scheme,
)
from schemas.config import EmotionConfig, StorageConfig
from schemas.tables import EVENTS, VIDEOS, VIDEOS_ADDED

log = logging.getLogger(__name__)

PLAYABLE = (".mp4", ".m4v", ".webm", ".ogv", ".ogg", ".mov")
"""Extensions a browser's <video> plays (H.264/VP9/AV1 in mp4 or webm; Theora in ogg).
MPEG-1 (.mpg, the GRID corpus), AVI, MKV... are listed as text."""
STILL_PX = 80  # height of a face still, px
TIMELINE_COLUMNS = [*COLUMNS, "emotion", "untrained"]
STATUS_READ = VIDEOS
"""The status columns the report reads (VIDEOS, `training_data` included:
pipeline/outputs/caveats.py). Files written before a column existed read back with nulls in it."""


@dataclass
class JobData:
    """What a report reads from OUT: status rows (VIDEOS), timelines (TIMELINE_COLUMNS rows or
    None when the job wrote none) and run.json (empty dict when missing)."""

    status: pa.Table
    timelines: pa.Table | None
    run: dict[str, Any]
    dataset: ds.Dataset | None = None


# --------------------------------------------------------------------------------------------
# Reading


def read_status_rows(out: str, storage: StorageConfig | None = None) -> pa.Table:
    """All status rows under OUT/videos/ (STATUS_READ columns; empty when there are none).
    A column some files lack (added later, such as `training_data`) is null there instead of
    dropped for all; an unreadable file is skipped with a warning naming it."""
    return read_tables(OutPaths(out).videos, STATUS_READ, storage, VIDEOS_ADDED)


def load_job(out: str, storage: StorageConfig | None = None) -> JobData:
    """Read a job's status rows, timelines and run.json from OUT (local or any fsspec URI)."""
    status = read_status_rows(out, storage)
    run: dict[str, Any] = read_json(OutPaths(out).run_record, storage) or {}
    dataset = None
    timelines = None
    try:
        dataset = open_timelines(out, storage)
    except FileNotFoundError:
        pass
    if dataset is not None:
        cols = [c for c in TIMELINE_COLUMNS if c in dataset.schema.names]
        timelines = dataset.to_table(columns=cols).sort_by(
            [("video_id", "ascending"), ("track_id", "ascending"), ("time_s", "ascending")]
        )
    if status.num_rows == 0 and timelines is None:
        raise FileNotFoundError(f"no job output at {out} (expected OUT/videos/ and OUT/timelines/)")
    return JobData(status, timelines, run, dataset)


# --------------------------------------------------------------------------------------------
# Pieces


def _finite(x: Any) -> float:
    """x as a float, 0 for None/NaN (a failed video has no duration)."""
    return float(x) if x is not None and math.isfinite(float(x)) else 0.0


def summary_of(job: JobData) -> dict[str, Any]:
    """The run summary: counts by status, faces (tracks of ok videos), hours of video (all
    decoded videos), frames, frames/s of the last run, model ids, untrained, config hashes."""
    st = job.status.to_pylist()
    counts = {OK: 0, NO_FACE: 0, FAILED: 0}
    for r in st:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    models = sorted({r["model_id"] for r in st if r["model_id"]})
    if not models and job.run.get("model_id"):
        models = [job.run["model_id"]]
    untrained = bool(job.run.get("untrained", False))
    if job.timelines is not None and "untrained" in job.timelines.column_names:
        untrained = untrained or bool(pc.any(job.timelines["untrained"]).as_py())
    return {
        "videos": len(st),
        **counts,
        "faces": int(sum(r["tracks"] or 0 for r in st if r["status"] == OK)),
        "hours": sum(_finite(r["duration_s"]) for r in st) / 3600.0,
        "frames": int(sum(r["frames"] or 0 for r in st)),
        "frames_per_s": job.run.get("frames_per_s"),
        "wall_s": job.run.get("wall_s"),
        "model_ids": models,
        "untrained": untrained,
        "training_data": training_data(job.status),
        "synthetic_only": synthetic_only(job.status),
        "config_hashes": sorted({r["config_hash"] for r in st if r["config_hash"]}),
        "started": job.run.get("started"),
        "ended": job.run.get("ended"),
    }


def find_events(timelines: pa.Table | None) -> pa.Table:
    """Happy episodes and spikes with `vaerr query`'s defaults, best score first per kind."""
    if timelines is None or timelines.num_rows == 0:
        return EVENTS.empty_table()
    return pa.concat_tables([find_happy(timelines), find_spikes(timelines)])


def video_order(events: pa.Table, status: pa.Table, timelines: pa.Table | None) -> list[str]:
    """Video ids with timelines, those with the best-scoring episode first (highest score of
    any kind), then the others in URI order."""
    if timelines is None:
        return []
    have = set(pc.unique(timelines["video_id"]).to_pylist())
    best: dict[str, float] = {}
    for vid, score in zip(events["video_id"].to_pylist(), events["score"].to_pylist()):
        best[vid] = max(best.get(vid, -math.inf), float(score))
    uris = dict(zip(status["video_id"].to_pylist(), status["uri"].to_pylist()))
    first = sorted(best, key=lambda v: (-best[v], uris.get(v, v)))
    rest = sorted(have - set(best), key=lambda v: uris.get(v, v))
    return [v for v in first if v in have] + rest


def video_src(uri: str, report: str | None) -> str | None:
    """The `src` for a <video> of `uri`, or None when a browser cannot play it from the page:
    local files (relative to a local report, so a folder moved together keeps working) and
    http(s) URLs with a playable extension."""
    low = uri.lower().split("?", 1)[0]
    if not low.endswith(PLAYABLE):
        return None
    proto = protocol(uri)
    if proto in ("http", "https"):
        return uri
    if proto != "file":
        return None
    path = os.path.abspath(without_scheme(uri))
    if report and is_plain_path(report):
        rel = os.path.relpath(path, os.path.dirname(os.path.abspath(report)))
        return quote(rel.replace(os.sep, "/"))
    return file_uri(path)


def peak_time(timelines: pa.Table, event: dict[str, Any], track_id: int) -> tuple[float, Any]:
    """(time s, box_xyxy or None) of a face's peak within an event: highest arousal for a
    spike (the top of the rise), highest arousal + valence for a happy episode."""
    m = (
        (np.asarray(timelines["video_id"].to_pylist(), dtype=object) == event["video_id"])
        & (timelines["track_id"].to_numpy() == track_id)
        & (timelines["time_s"].to_numpy() >= event["start_s"] - 1e-6)
        & (timelines["time_s"].to_numpy() <= event["end_s"] + 1e-6)
    )
    idx = np.flatnonzero(m)
    if len(idx) == 0:
        return float(event["start_s"]), None
    a = timelines["arousal"].to_numpy()[idx].astype(np.float64)
    v = timelines["valence"].to_numpy()[idx].astype(np.float64)
    best = idx[int(np.argmax(a if event["kind"] == "spike" else a + v))]
    box = timelines["box_xyxy"][int(best)].as_py() if "box_xyxy" in timelines.column_names else None
    return float(timelines["time_s"][int(best)].as_py()), box


def face_still(
    uri: str, time_s: float, box: Any, blur: bool, storage: StorageConfig | None = None
) -> bytes | None:
    """PNG bytes of the face box (grown by 20 %) in the frame at `time_s`, STILL_PX high,
    blurred beyond recognition with `blur`; None when the frame cannot be decoded."""
    import cv2

    from pipeline.outputs.render import blur_region
    from pipeline.video import VideoError, VideoReader

    if box is None:
        return None
    try:
        with VideoReader(uri, storage) as reader:
            chunk = next(reader.chunks(25.0, start_s=time_s, end_s=time_s + 0.2, chunk_frames=1))
    except (VideoError, StopIteration, OSError) as exc:
        log.warning("%s: no still at %.1f s: %s", uri, time_s, exc)
        return None
    img = np.ascontiguousarray(chunk.frames[0])
    h, w = img.shape[:2]
    if blur:
        blur_region(img, np.asarray(box, np.float64))
    x1, y1, x2, y2 = (float(c) for c in box)
    gx, gy = 0.2 * (x2 - x1), 0.2 * (y2 - y1)
    x1, y1 = max(0, int(x1 - gx)), max(0, int(y1 - gy))
    x2, y2 = min(w, int(math.ceil(x2 + gx))), min(h, int(math.ceil(y2 + gy)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    crop = img[y1:y2, x1:x2]
    scale = STILL_PX / crop.shape[0]
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), STILL_PX), cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else None


def build_report(
    job: JobData,
    out: str,
    options: ReportOptions | None = None,
    report_uri: str | None = None,
    storage: StorageConfig | None = None,
    emotion: EmotionConfig | None = None,
) -> tuple[str, dict[str, Any]]:
    """(HTML text, facts) of the report of `job` read from `out`. `report_uri` is where the
    page will be written (video links are made relative to it when both are local). facts:
    the summary plus `events` (found), `videos_shown`, `videos_with_timelines`."""
    options = options or ReportOptions()
    s = summary_of(job)
    events = find_events(job.timelines)
    order = video_order(events, job.status, job.timelines)
    shown = order[: options.max_videos]
    ids = dom_ids(shown)
    uris = dict(zip(job.status["video_id"].to_pylist(), job.status["uri"].to_pylist()))
    if job.timelines is not None:
        first = job.timelines.group_by("video_id").aggregate([("uri", "min")])
        for vid, uri in zip(first["video_id"].to_pylist(), first["uri_min"].to_pylist()):
            uris.setdefault(vid, uri)
    srcs = {vid: video_src(uris[vid], report_uri) for vid in shown}
    players = {vid for vid in shown if srcs[vid] is not None}

    stills: dict[tuple[Any, int], bytes] = {}
    if options.stills and job.timelines is not None:
        stills = _stills(job, events, options, storage)

    parts = page_head(out, s, job.status, events, ids, players, stills, options)
    parts.append(render("cap", shown=len(shown), total=len(order), cap=options.max_videos))
    size = sum(len(p) for p in parts)
    for n_done, vid in enumerate(shown):
        if size > options.max_bytes:
            left = len(shown) - n_done
            log.warning("report over %d bytes: %d video sections left out", size, left)
            parts.append(render("limit", left=left))
            shown = shown[:n_done]
            break
        rows = job.timelines.filter(pc.equal(job.timelines["video_id"], vid))
        html_v = video_html(vid, uris[vid], rows, events, ids[vid], srcs[vid], options, emotion)
        size += len(html_v)
        parts.append(html_v)
    parts.append(render("tail", script=SCRIPT))
    facts = {
        **s,
        "events": events.num_rows,
        "happy": int(pc.sum(pc.equal(events["kind"], "happy")).as_py() or 0),
        "spikes": int(pc.sum(pc.equal(events["kind"], "spike")).as_py() or 0),
        "videos_shown": len(shown),
        "videos_with_timelines": len(order),
    }
    return "\n".join(parts), facts


def _stills(
    job: JobData, events: pa.Table, options: ReportOptions, storage: StorageConfig | None
) -> dict[tuple[Any, int], bytes]:
    """Face stills at the peak of each shown event: {(event key, track id): PNG}. Only from a
    source that is the version the job analysed (pipeline.outputs.identity.same_version): a replaced
    file would give another frame, whose face the blur would miss."""
    assert job.dataset is not None
    out: dict[tuple[Any, int], bytes] = {}
    rows_of = {r["video_id"]: r for r in job.status.to_pylist()}
    checked: dict[str, bool] = {}
    for kind in ("happy", "spike"):
        rows = [r for r in events.to_pylist() if r["kind"] == kind]
        rows.sort(key=lambda r: -r["score"])
        for r in rows[: options.max_events]:
            rows_v = job.dataset.to_table(
                columns=["video_id", "track_id", "time_s", "arousal", "valence", "box_xyxy"],
                filter=pc.field("video_id") == r["video_id"],
            )
            vid = r["video_id"]
            if vid not in checked:
                checked[vid] = same_version(r["uri"], rows_of.get(vid), storage)
                if not checked[vid]:
                    log.warning("%s: not the version the job analysed (or unknown): no stills",
                                r["uri"])  # fmt: skip
            if not checked[vid]:
                continue
            for tid in r["track_ids"]:
                t, box = peak_time(rows_v, r, tid)
                png = face_still(r["uri"], t, box, options.blur_faces, storage)
                if png is not None:
                    out[(event_key(r), tid)] = png
    return out


def write_report(
    out: str,
    output: str,
    options: ReportOptions | None = None,
    storage: StorageConfig | None = None,
    emotion: EmotionConfig | None = None,
) -> dict[str, Any]:
    """Read the job at `out`, write its report to `output` (local or any fsspec URI,
    atomically) and return the facts of `build_report` plus `output` and `bytes`."""
    job = load_job(out, storage)
    text, facts = build_report(job, out, options, output, storage, emotion)
    data = text.encode("utf-8")
    with atomic_write(output, storage) as f:
        f.write(data)
    return {**facts, "output": output, "bytes": len(data)}


__all__ = [
    "JobData",
    "ReportOptions",
    "build_report",
    "load_job",
    "summary_of",
    "video_src",
    "write_report",
]
