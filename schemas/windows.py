"""Columns of the rows the face stage hands the model stage: the one declaration (issue 14).

Rows are of two kinds: `window` rows (one model window of one track; per-frame columns padded
to W frames) and one `end` row per video (its status and how many windows it produced, so the
writer knows when a video is complete even when windows arrive out of order). Every batch
carries every column; a row of one kind holds its `default` in the other kind's columns.

`pipeline.stages` builds its rows and stacks its batches from this list, and
`FACE_STAGE_OUTPUT` / `MODEL_STAGE_OUTPUT` (the documented contract the tests check) are
derived from it. Symbolic shapes: W = infer.window_frames, S = faces.align.crop_size.
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
    """

    name: str
    dtype: str
    doc: str = ""
    shape: tuple[str | int, ...] = ()
    default: Any = None
    frames: str | None = None

    def resolved_shape(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The per-row shape with symbols replaced from `dims`."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def describe(self) -> str:
        """`dtype [shape]: doc`, as listed in FACE_STAGE_OUTPUT."""
        kind = "str" if self.dtype == "object" else self.dtype
        shape = f" [{', '.join(str(d) for d in self.shape)}]" if self.shape else ""
        return f"{kind}{shape}" + (f": {self.doc}" if self.doc else "")


def _frames(name: str, dtype: str, shape: tuple[str | int, ...], src: str | None = None):
    return StageColumn(name, dtype, "per frame, zero past n", shape, frames=src or name)


# Columns of every batch the face stage yields, in order.
FACE_COLUMNS: tuple[StageColumn, ...] = (
    StageColumn("video_id", "object"),
    StageColumn("uri", "object"),
    StageColumn("source_etag", "object"),
    StageColumn("kind", "object", f"{WINDOW} | {END}", default=WINDOW),
    StageColumn("track_id", "int32", default=-1),
    StageColumn("start", "int32", "window start, frames from the track's first frame", default=0),
    StageColumn("n", "int32", "valid frames in this window (<= W)", default=0),
    _frames("crops", "uint8", ("W", "S", "S"), "crop"),
    _frames("frame_index", "int32", ("W",)),
    _frames("box_xyxy", "float32", ("W", 4)),
    _frames("det_score", "float32", ("W",)),
    _frames("interpolated", "bool", ("W",)),
    StageColumn("status", "object", "end rows", default=""),
    StageColumn("reason", "object", "end rows; '' when none", default=""),
    StageColumn("frames", "int64", "end rows", default=0),
    StageColumn("tracks", "int32", "end rows", default=0),
    StageColumn("windows", "int32", "end rows: windows this video produced", default=0),
    StageColumn("duration_s", "float64", "end rows", default=0.0),
    StageColumn("fps", "float64", "end rows: analysis rate", default=0.0),
    StageColumn("processing_s", "float64", "end rows: face-stage seconds", default=0.0),
    StageColumn("warnings", "object", "end rows: decode damage; '' when clean", default=""),
    StageColumn(
        "failure_kind",
        "object",
        "end rows of failed videos: video | environment; '' otherwise",
        default="",
    ),
)

# Per-frame columns of window rows, cut from the tracker's rows and padded to W.
FRAME_COLUMNS: tuple[StageColumn, ...] = tuple(c for c in FACE_COLUMNS if c.frames)

# What the model stage adds (and it drops `crops` unless infer.store_crops).
SCORE_COLUMNS: tuple[StageColumn, ...] = (
    StageColumn("arousal", "float32", "NaN past n and on end rows", ("W",)),
    StageColumn("valence", "float32", "NaN past n and on end rows", ("W",)),
)
MODEL_COLUMNS: tuple[StageColumn, ...] = (
    *(c for c in FACE_COLUMNS if c.name != "crops"),
    *SCORE_COLUMNS,
)
