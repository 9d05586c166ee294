"""`vaerr faces`: one video -> DIR/tracks.parquet (schemas.tables.TRACKS), DIR/clips.parquet
(schemas.tables.CLIPS: aligned crop_size^2 gray crops, one row per track and frame) and
DIR/config.yaml, streamed batch by batch; returns the status record."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.errors import escape, one_line
from pipeline.ids import video_id
from pipeline.progress import Progress
from pipeline.status import FAILED, face_status, failure_reason, status_record
from pipeline.storage import ParquetStream, join, remove, write_text
from schemas.config import config_yaml
from schemas.tables import BOX, CLIPS, TRACKS

if TYPE_CHECKING:  # torch and the models: `vaerr --help` does not load them
    from pipeline.faces.extract import FacePipeline

log = logging.getLogger(__name__)


def tracks_table(rows: dict[str, np.ndarray]) -> pa.Table:
    """Face rows -> a TRACKS table (landmarks flattened to [K*2])."""
    n = len(rows["track_id"])
    lms = rows["landmarks"].reshape(n, -1)
    return pa.table(
        {
            "track_id": rows["track_id"],
            "frame_index": rows["frame_index"],
            "time_s": rows["time_s"],
            "box_xyxy": pa.FixedSizeListArray.from_arrays(rows["box_xyxy"].reshape(-1), 4).cast(
                BOX
            ),
            "det_score": rows["det_score"],
            "landmarks": pa.ListArray.from_arrays(
                np.arange(0, lms.size + 1, lms.shape[1] or 1, dtype=np.int32)[: n + 1],
                lms.reshape(-1),
            ),
            "interpolated": rows["interpolated"],
        }
    )


def clips_table(rows: dict[str, np.ndarray]) -> pa.Table:
    """Face rows -> a CLIPS table (crops as raw bytes, row-major)."""
    crops = rows["crop"]
    return pa.table(
        {
            "track_id": rows["track_id"],
            "frame_index": rows["frame_index"],
            "time_s": rows["time_s"],
            "crop": pa.array([c.tobytes() for c in crops], pa.binary()),
        },
        schema=CLIPS,
    )


def export_faces(pipe: FacePipeline, uri: str, out_dir: str) -> dict[str, Any]:
    """Run the face pipeline on `uri` and write its tables under `out_dir`.

    Any failure (an undecodable video, storage unreachable for the input or the output) is a
    `failed` record with a one-line reason, never an exception: the streams are discarded (on
    object stores nothing is published) and tracks/clips of an earlier run in `out_dir` are
    removed, so the folder never shows old tables beside the new config."""
    cfg = pipe.cfg
    vid = video_id(uri)
    streams: list[ParquetStream] = []
    frames = 0
    try:
        write_text(join(out_dir, "config.yaml"), config_yaml(cfg), cfg.storage)
        tracks = ParquetStream(join(out_dir, "tracks.parquet"), TRACKS, cfg.storage)
        streams.append(tracks)
        clips = ParquetStream(join(out_dir, "clips.parquet"), CLIPS, cfg.storage)
        streams.append(clips)
        run = pipe.run(uri)
        with Progress("faces", 1, unit="frame") as bar:
            for rows in run:
                frames = run.frames
                tracks.write(tracks_table(rows))
                clips.write(clips_table(rows))
                if bar.total_frames is None and run.info is not None:
                    bar.set_total_frames(int(run.info.duration_s * cfg.video.fps) or None)
                bar.frames_done(run.frames - bar.frames)
            bar.frames_done(run.frames - bar.frames)
        frames = run.frames
        tracks.close()
        streams.remove(tracks)
        clips.close()
        streams.remove(clips)
    except Exception as exc:
        for s in streams:
            _quietly(lambda s=s: s.close(ok=False))
        for name in ("tracks.parquet", "clips.parquet"):
            _quietly(lambda name=name: remove(join(out_dir, name), cfg.storage))
        reason = failure_reason(exc, uri)
        log.warning("%s: failed: %s", escape(uri), escape(reason))
        return status_record(vid, uri, FAILED, reason, 0, frames)
    status, reason = face_status(run.tracks)
    log.info("%s: %s, %d frames, %d tracks", escape(uri), status, run.frames, run.tracks)
    return status_record(vid, uri, status, reason, run.tracks, run.frames)


def _quietly(fn: Any) -> None:
    """Run a clean-up step of a failure path; its own error is logged, not raised."""
    try:
        fn()
    except Exception as exc:
        log.warning("clean-up after a failure failed: %s: %s", type(exc).__name__, one_line(exc))
