"""Columns of the rows the face stage hands the model stage: the one declaration (issue 14).

Rows are of two kinds: `window` rows (one model window of one track; per-frame columns padded
to W frames) and one `end` row per video (its status and how many windows it produced, so the
writer knows when a video is complete even when windows arrive out of order). Every batch
carries every column; a row of one kind holds its `default` in the other kind's columns.

`pipeline.stages` builds its rows and stacks its batches from this list, and
`FACE_STAGE_OUTPUT` / `MODEL_STAGE_OUTPUT` (the documented contract the tests check) are
derived from it. Symbolic shapes: W = infer.window_frames, S = faces.align.crop_size.

Columns marked `written` reach the video's output tables, and everything that carries them is
derived from this list: a per-frame one becomes a column of `schemas.tables.TIMELINES` (its
arrow type from its dtype and shape; the value at the nearest analysis frame of each timeline
row: `pipeline.timeline`), an end-row one a field of the status row (`schemas.tables.VIDEOS`,
'' read as null: `pipeline.runner`). Adding a timeline column is one `_frames(...)` line here
(`added=True`: older files lack it) plus the code that computes it into the face rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WINDOW, END = "window", "end"


@dataclass(frozen=True)
class StageColumn:
    """One column of a stage batch.

    dtype: numpy dtype name ("object" for strings). shape: per-row shape, symbols resolved by
    `dims` (e.g. {"W": 25, "S": 96}); () for scalars. default: the value on rows that do not
    carry the column (array columns default to zeros of their shape). frames: for per-frame
    window columns, the `WindowCutter` key the column is cut from. doc: what it holds.
    written: carried into the video's output table (module doc). added: a timeline column
    added after the first release, which files written before it lack (`vaerr verify` accepts
    them, as it does status files without a later status column).
    """

    name: str
    dtype: str
    doc: str = ""
    shape: tuple[str | int, ...] = ()
    default: Any = None
    frames: str | None = None
    written: bool = False
    added: bool = False

    def resolved_shape(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The per-row shape with symbols replaced from `dims`."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def describe(self) -> str:
        """`dtype [shape]: doc`, as listed in FACE_STAGE_OUTPUT."""
        kind = "str" if self.dtype == "object" else self.dtype
        shape = f" [{', '.join(str(d) for d in self.shape)}]" if self.shape else ""
        return f"{kind}{shape}" + (f": {self.doc}" if self.doc else "")


def _frames(
    name: str,
    dtype: str,
    shape: tuple[str | int, ...],
    src: str | None = None,
    *,
    written: bool = False,
    added: bool = False,
) -> StageColumn:
    """A per-frame window column cut from the face rows' `src` (default: its own name)."""
    doc = "per frame, zero past n"
    return StageColumn(name, dtype, doc, shape, frames=src or name, written=written, added=added)


def _end(name: str, dtype: str, doc: str, default: Any) -> StageColumn:
    """An end-row column that the status row carries."""
    return StageColumn(name, dtype, doc, default=default, written=True)


# Columns of every batch the face stage yields, in order.
FACE_COLUMNS: tuple[StageColumn, ...] = (
    StageColumn("video_id", "object", written=True),
    StageColumn("uri", "object", written=True),
    StageColumn("source_etag", "object", written=True),
    StageColumn("kind", "object", f"{WINDOW} | {END}", default=WINDOW),
    StageColumn("track_id", "int32", default=-1),
    StageColumn("start", "int32", "window start, frames from the track's first frame", default=0),
    StageColumn("n", "int32", "valid frames in this window (<= W)", default=0),
    _frames("crops", "uint8", ("W", "S", "S"), "crop"),
    _frames("frame_index", "int32", ("W",)),
    _frames("box_xyxy", "float32", ("W", 4), written=True),
    _frames("det_score", "float32", ("W",), written=True),
    _frames("interpolated", "bool", ("W",), written=True),
    _end("status", "object", "end rows", ""),
    _end("reason", "object", "end rows; '' when none", ""),
    _end("frames", "int64", "end rows", 0),
    _end("tracks", "int32", "end rows", 0),
    StageColumn("windows", "int32", "end rows: windows this video produced", default=0),
    _end("duration_s", "float64", "end rows", 0.0),
    _end("fps", "float64", "end rows: analysis rate", 0.0),
    _end("processing_s", "float64", "end rows: face-stage seconds", 0.0),
    _end("warnings", "object", "end rows: decode damage; '' when clean", ""),
    _end(
        "failure_kind", "object", "end rows of failed videos: video | environment; '' otherwise", ""
    ),
)

# Per-frame columns of window rows, cut from the tracker's rows and padded to W.
FRAME_COLUMNS: tuple[StageColumn, ...] = tuple(c for c in FACE_COLUMNS if c.frames)
# The per-frame columns every timeline row carries (at its nearest analysis frame).
TIMELINE_FRAME_COLUMNS: tuple[StageColumn, ...] = tuple(c for c in FRAME_COLUMNS if c.written)
# The end row's columns the status row carries (scalars: head columns and end-row fields).
STATUS_END_COLUMNS: tuple[StageColumn, ...] = tuple(
    c for c in FACE_COLUMNS if c.written and not c.frames
)

# What the model stage adds (and it drops `crops` unless infer.store_crops).
SCORE_COLUMNS: tuple[StageColumn, ...] = (
    StageColumn("arousal", "float32", "NaN past n and on end rows", ("W",)),
    StageColumn("valence", "float32", "NaN past n and on end rows", ("W",)),
)
MODEL_COLUMNS: tuple[StageColumn, ...] = (
    *(c for c in FACE_COLUMNS if c.name != "crops"),
    *SCORE_COLUMNS,
)
