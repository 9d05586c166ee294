"""Columns declared once (issue 26): schemas/stage_columns.py says which per-frame columns reach the
timeline and which end-row fields reach the status row; the TIMELINES schema, the writer's
blending and tables, and `vaerr verify` derive from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.outputs.verify as verify
from pipeline.timeline import TrackAccumulator, timeline_rows, timeline_table
from pipeline.writer import status_fields
from schemas.config import VaerrConfig
from schemas.stage_columns import (
    FACE_COLUMNS,
    STATUS_END_COLUMNS,
    TIMELINE_FRAME_COLUMNS,
    StageColumn,
)
from schemas.tables import (
    TIMELINES,
    TIMELINES_ADDED,
    VIDEOS,
    VIDEOS_ADDED,
    frame_type,
    schema_matches,
)
from tests.test_report import planted_job

# The timeline table as first released (DESIGN.md): deriving it must not change it, and files
# written with it must stay valid whatever columns are added later.
TIMELINES_V1 = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("track_id", pa.int32()),
        ("time_s", pa.float64()),
        ("frame_index", pa.int32()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("emotion", pa.string()),
        ("box_xyxy", pa.list_(pa.float32(), 4)),
        ("det_score", pa.float32()),
        ("interpolated", pa.bool_()),
        ("model_id", pa.string()),
        ("untrained", pa.bool_()),
    ]
)
ARROW_OF = {"object": pa.string(), "int32": pa.int32(), "int64": pa.int64()}


def test_timelines_schema_is_derived_and_unchanged():
    assert schema_matches(TIMELINES_V1, TIMELINES, TIMELINES_ADDED)
    assert set(TIMELINES_ADDED) == set(TIMELINES.names) - set(TIMELINES_V1.names)
    names = TIMELINES.names
    carried = names[names.index("emotion") + 1 : names.index("model_id")]
    assert carried == [c.name for c in TIMELINE_FRAME_COLUMNS]


@pytest.mark.parametrize(
    ("column", "expect"),
    [
        (StageColumn("x", "float32", shape=("W",)), pa.float32()),
        (StageColumn("x", "bool", shape=("W",)), pa.bool_()),
        (StageColumn("x", "float32", shape=("W", 4)), pa.list_(pa.float32(), 4)),
        (StageColumn("x", "int16", shape=("W", 3, 2)), pa.list_(pa.list_(pa.int16(), 2), 3)),
    ],
)
def test_frame_type_of_a_declared_column(column, expect):
    assert frame_type(column) == expect


@pytest.mark.parametrize("column", STATUS_END_COLUMNS, ids=lambda c: c.name)
def test_every_written_end_column_is_a_status_column(column):
    """The status row takes these from the end row by name, so VIDEOS must hold each with the
    end row's type (floats as declared, strings as strings)."""
    expect = ARROW_OF.get(column.dtype) or pa.from_numpy_dtype(np.dtype(column.dtype))
    assert VIDEOS.field(column.name).type == expect


@pytest.mark.parametrize("kind", ["ok", "failed"])
def test_status_fields_come_from_the_end_row(kind):
    """Numpy scalars become Python values and '' becomes null, for every declared field."""
    end = {c.name: np.asarray([c.default], c.dtype)[0] for c in FACE_COLUMNS if not c.shape}
    end.update(video_id="v1", uri="/x.mp4", source_etag="", status=kind, frames=np.int64(50))
    end["reason"] = "" if kind == "ok" else "VideoError: empty"
    row = status_fields(end)
    assert list(row) == [c.name for c in STATUS_END_COLUMNS]
    assert row["frames"] == 50 and type(row["frames"]) is int
    assert row["source_etag"] is None and row["warnings"] is None
    assert row["reason"] == (None if kind == "ok" else "VideoError: empty")
    pa.Table.from_pylist([row], VIDEOS)  # every value fits the status schema


@pytest.mark.parametrize("output_hz", [10.0, None])
def test_any_metadata_column_is_carried_at_the_nearest_frame(output_hz):
    """A metadata column the writer was never told about by name reaches the rows."""
    acc = TrackAccumulator()
    for start in (0, 40):
        fi = np.arange(start, start + 60)
        meta = {"box_xyxy": np.tile(fi[:, None], (1, 4)).astype(np.float32), "trial": fi * 2.0}
        acc.add(fi, np.full(60, 0.1), np.full(60, -0.1), meta)
    rows = timeline_rows(acc.per_frame(), fps=25.0, output_hz=output_hz)
    carried = rows["trial"] / 2  # the analysis frame each row took its metadata from
    assert np.all(np.abs(carried - rows["time_s"] * 25.0) <= 0.5 + 1e-9)
    np.testing.assert_array_equal(rows["box_xyxy"][:, 0], carried)


@pytest.mark.parametrize("n", [1, 7])
def test_timeline_table_fills_every_declared_column(n):
    per_frame = {
        "frame_index": np.arange(n),
        "arousal": np.linspace(-0.5, 0.5, n),
        "valence": np.zeros(n),
        **{c.name: np.ones((n, *c.shape[1:]), c.dtype) for c in TIMELINE_FRAME_COLUMNS},
    }
    rows = timeline_rows(per_frame, fps=25.0, output_hz=None)
    t = timeline_table(rows, "vid", "/v.mp4", 3, "m-1", True)
    assert t.schema.equals(TIMELINES) and t.num_rows == n
    assert t["box_xyxy"][0].as_py() == [1.0] * 4 and t["track_id"][0].as_py() == 3


TRIAL = pa.field("trial_px", pa.float32())


@pytest.mark.parametrize(
    ("schema", "added", "columns", "ok"),
    [
        (VIDEOS, VIDEOS_ADDED, [f.name for f in VIDEOS if f.name not in VIDEOS_ADDED], True),
        (VIDEOS, VIDEOS_ADDED, [f.name for f in VIDEOS if f.name != "reason"], False),
        (TIMELINES_V1.append(TRIAL), ("trial_px",), TIMELINES_V1.names, True),
        (TIMELINES_V1.append(TRIAL), (), TIMELINES_V1.names, False),
        (TIMELINES_V1, (), [*TIMELINES_V1.names, "trial_px"], False),
    ],
    ids=["status-added", "status-missing", "timeline-added", "timeline-missing", "extra"],
)
def test_schema_matches_accepts_only_added_columns_absent(schema, added, columns, ok):
    fields = {**{f.name: f for f in schema}, "trial_px": TRIAL}
    actual = pa.schema([fields[c] for c in columns])
    assert schema_matches(actual, schema, added) is ok


@pytest.mark.parametrize("case", ["declared added", "not declared added", "as declared now"])
def test_verify_accepts_timelines_without_an_added_column(tmp_path: Path, monkeypatch, case):
    """Timeline files written before a nullable column was added (here: with the first
    release's columns) verify clean as long as the column is declared added, as status files
    do; undeclared, each such file is a violation."""
    out = planted_job(tmp_path / "out")
    for f in (out / "timelines").glob("*.parquet"):  # as the first release wrote them
        pq.write_table(pq.read_table(f).select(TIMELINES_V1.names), f)
    if case != "as declared now":
        monkeypatch.setattr(verify, "TIMELINES", TIMELINES.append(TRIAL))
        added = ("trial_px",) if case == "declared added" else ()
        monkeypatch.setattr(verify, "TIMELINES_ADDED", TIMELINES_ADDED + added)
    problems = verify.verify_output(str(out), VaerrConfig(), allow_mixed=True)
    schema = [p for p in problems if "schema" in p]
    assert len(schema) == (2 if case == "not declared added" else 0), problems
