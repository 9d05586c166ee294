"""pyarrow schemas of every table vaerr writes: the single source of truth (DESIGN.md).

Writers validate against these (`conform`); readers and tests compare against them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas.stage_columns import TIMELINE_FRAME_COLUMNS, StageColumn

BOX = pa.list_(pa.float32(), 4)


def frame_type(column: StageColumn) -> pa.DataType:
    """The arrow type of one frame of a per-frame window column (shape ("W", ...)): its dtype,
    a fixed-size list per trailing dimension (("W", 4) float32 -> fixed_size_list<float>[4])."""
    out = pa.from_numpy_dtype(np.dtype(column.dtype))
    for size in reversed(column.shape[1:]):
        assert isinstance(size, int), f"{column.name}: a timeline column needs fixed sizes"
        out = pa.list_(out, size)
    return out


# One row per (video, track, output time step): the row's keys and blended values, the
# per-frame columns declared `written` in schemas/stage_columns.py (at the nearest analysis frame),
# the model.
TIMELINES = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("track_id", pa.int32()),
        ("time_s", pa.float64()),
        ("frame_index", pa.int32()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("emotion", pa.string()),
        *((c.name, frame_type(c)) for c in TIMELINE_FRAME_COLUMNS),
        ("model_id", pa.string()),
        ("untrained", pa.bool_()),
    ]
)
# Columns TIMELINES gained after its first release (declared `added`): older timeline files
# lack them, and read back with nulls there.
TIMELINES_ADDED = tuple(c.name for c in TIMELINE_FRAME_COLUMNS if c.added)

# Exactly one row per input video.
VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("status", pa.string()),  # ok | no_face | failed
        ("reason", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("frames", pa.int64()),
        ("tracks", pa.int32()),
        ("processing_s", pa.float64()),
        ("model_id", pa.string()),
        ("config_hash", pa.string()),
        ("source_etag", pa.string()),
        ("warnings", pa.string()),  # decode damage (corrupt packets, gaps); null when clean
        # failed rows: "video" (final at once) | "environment" (storage, memory, a dead worker:
        # a rerun retries it while attempts < infer.max_attempts); null when not failed.
        ("failure_kind", pa.string()),
        ("attempts", pa.int32()),  # runs that tried this video for this source/model/config
        # what trained the model (its checkpoint's provenance): "synthetic" (rendered faces:
        # a demo model), a dataset name, or null when unknown (and in files written before it).
        ("training_data", pa.string()),
    ]
)
# Columns VIDEOS gained after its first release: older status files read back with nulls.
VIDEOS_ADDED = ("warnings", "failure_kind", "attempts", "training_data")
# `training_data` of a model trained on rendered synthetic faces only (the demo's): the synthetic
# corpus marks its manifest so, preprocess carries it into the shards' index, fine-tuning into
# the checkpoint's provenance, and every output made with the model says so.
SYNTHETIC = "synthetic"

# Episodes found by `vaerr query`.
EVENTS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("kind", pa.string()),
        ("track_ids", pa.list_(pa.int32())),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("peak_arousal", pa.float32()),
        ("peak_valence", pa.float32()),
        ("mean_arousal", pa.float32()),
        ("mean_valence", pa.float32()),
        ("score", pa.float32()),
    ]
)

# `vaerr faces`: one row per (track, analysis frame). landmarks are [K, 2] flattened (x, y)
# in source pixels, K = 68 (fan68) or 5 (retina5).
TRACKS = pa.schema(
    [
        ("track_id", pa.int32()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
        ("box_xyxy", BOX),
        ("det_score", pa.float32()),
        ("landmarks", pa.list_(pa.float32())),
        ("interpolated", pa.bool_()),
    ]
)

# Aligned crops of one track (`vaerr faces` clips/ and training shards): one row per frame,
# `crop` is crop_size x crop_size grayscale uint8, row-major.
CLIPS = pa.schema(
    [
        ("track_id", pa.int32()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
        ("crop", pa.binary()),
    ]
)

# `list_inputs` (pipeline/manifest.py): one row per input video, deduplicated by URI.
# source_etag: the object's ETag, else size + mtime (a rerun skips a video only if unchanged).
MANIFEST = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("source_etag", pa.string()),
    ]
)


def schema_matches(actual: pa.Schema, schema: pa.Schema, added: tuple[str, ...] = ()) -> bool:
    """`actual` is `schema`, except that columns named in `added` (added after the table's
    first release) may be absent, as in files written before them."""
    absent = [n for n in added if n not in actual.names]
    return actual.equals(pa.schema([f for f in schema if f.name not in absent]))


def conform(table: pa.Table, schema: pa.Schema, fill_missing: tuple[str, ...] = ()) -> pa.Table:
    """Select and cast `table` to `schema`'s columns; missing or uncastable columns raise,
    except those named in `fill_missing` (columns added later: read back as nulls)."""
    for name in fill_missing:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing} required by the schema")
    return table.select(schema.names).cast(schema)


# Training clip shards (`vaerr preprocess`): one row per (track, analysis frame) of one labelled
# (or unlabelled, pretext) video. Labels are resampled to the frame times; null = no label.
# audio_feat is the pretext target of that frame (e.g. 4 stacked 80-d log-mel frames = 320
# floats for 25 fps video), null when the video has no audio or features were not requested.
CLIP_SHARD = pa.schema(
    [
        ("dataset", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("track_id", pa.int32()),
        ("split", pa.string()),  # train | validation | test | pretext
        ("subject", pa.string()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
        ("crop", pa.binary()),  # crop_size^2 gray uint8, row-major
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("audio_feat", pa.list_(pa.float32())),
    ]
)

# The index of `vaerr preprocess`'s shards: one row per kept sequence (labelled person or
# unlabelled track) of a video.
SEQUENCES = pa.schema(
    [
        ("dataset", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("track_id", pa.int32()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("shard", pa.string()),  # path of the CLIP_SHARD file, relative to the shards root
        ("first_frame", pa.int32()),
        ("n_frames", pa.int32()),
        ("labelled_frames", pa.int32()),
        ("has_audio", pa.bool_()),
        ("fps", pa.float64()),
        ("face", pa.string()),  # how the track was chosen: largest | longest | all | left...
        # rendered faces (the synthetic corpus) rather than people; null in older indexes
        ("synthetic", pa.bool_()),
    ]
)

# One status row per video (written last: it commits the video's shard and sequences).
PREPROCESS_STATUS = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("status", pa.string()),  # ok | no_face | failed
        ("reason", pa.string()),
        ("frames", pa.int64()),
        ("tracks", pa.int32()),
        ("sequences", pa.int32()),
        ("labelled_frames", pa.int64()),  # labelled frames kept in the sequences (scored)
        # labelled frames the annotation has at the analysis rate (all persons), face or not:
        # labelled_frames / annotated_frames is the coverage (null: shards written before it)
        ("annotated_frames", pa.int64()),
        ("processing_s", pa.float64()),
        ("config_hash", pa.string()),
        ("source_etag", pa.string()),
        # failed rows: "video" (final) or "environment" (storage, memory, a dead worker: a
        # rerun retries it while attempts < infer.max_attempts), as in schemas.tables.VIDEOS
        ("failure_kind", pa.string()),
        ("attempts", pa.int32()),  # runs that tried this video for this source/config
    ]
)
