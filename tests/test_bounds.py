"""Hostile configs, queries and names fail fast (issue 13, items 3, 7, 9, 10): bounded YAML,
config bounds checked before work, timelines-only reads, bounded SQL, MPEG cuts, symlinks in
globs, one-line log records, which Ray a job uses."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli_io import OneLineFormatter
from pipeline.device import check_device
from pipeline.manifest import list_inputs
from pipeline.outputs.query import (
    QueryLimit,
    QueryRefused,
    SqlLimits,
    open_timelines,
    read_timelines,
    run_sql,
)
from pipeline.raysetup import ray_target
from pipeline.video import VideoReader, decode_warnings
from schemas.config import config_hash, load_config
from schemas.tables import TIMELINES
from schemas.yamlsafe import load_yaml
from tests.conftest import asset
from tests.test_hostile_cli import BOMB_FLOW, BOMB_YAML
from tests.test_query import happy_video, write_job_output

# --------------------------------------------------------------------------------------------
# YAML and config bounds (item 7)


def test_yaml_bombs_are_refused_fast_and_plain_anchors_still_work(tmp_path: Path):
    start = time.monotonic()
    for text, what in (
        (BOMB_YAML, "expands to more than"),
        (BOMB_FLOW, "expands to more than"),
        ("a: &a [*a]", "refers to itself"),
        ("[" * 100 + "]" * 100, "nested deeper"),
        ("x: " + "y" * (2 << 20), "byte limit"),
        ("a: b: c", "not valid YAML"),
    ):
        with pytest.raises(ValueError, match=what):
            load_yaml(text, "t.yaml")
    assert time.monotonic() - start < 2.0
    assert load_yaml("base: &b {x: 1}\nuse: *b\n", "t") == {"base": {"x": 1}, "use": {"x": 1}}
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB_YAML)
    with pytest.raises(ValueError, match="bomb.yaml: YAML expands"):
        load_config(cfg)
    with pytest.raises(ValueError, match="--set emotion.angles: YAML expands"):
        load_config(None, [f"emotion.angles={BOMB_FLOW}"])
    registry = tmp_path / "models.yaml"
    registry.write_text(BOMB_YAML)
    from pipeline.model.catalog import read_catalog

    with pytest.raises(ValueError, match="models.yaml: YAML expands"):
        read_catalog(str(registry))


@pytest.mark.parametrize(
    "sets, field",
    [
        (["emotion.angles={}"], "emotion.angles"),
        (["emotion.angles={Happy: .nan}"], "emotion.angles"),
        (["infer.window_frames=100000", "infer.hop_frames=10"], "infer.window_frames"),
        (["video.fps=10", "infer.output_hz=20"], "infer.output_hz"),
        (["infer.output_hz=1e9"], "infer.output_hz"),
        (["video.start_s=5", "video.end_s=2"], "video.start_s"),
        (["video.start_s=2", "video.end_s=2"], "video.start_s"),
        (["storage.retry_s=.inf"], "storage.retry_s"),
        (["storage.retry_s=1e9"], "storage.retry_s"),
        (["model.dtype=float64"], "model.dtype"),
        (["faces.dtype=half"], "faces.dtype"),
    ],
)
def test_config_bounds_refused_at_load(sets: list[str], field: str):
    with pytest.raises(ValueError) as err:
        load_config(None, sets)
    assert field.split(".")[0] in str(err.value)


def test_bounds_keep_the_hash_of_unchanged_settings():
    """Validators only refuse; they never rewrite values, so the dump and hash are stable."""
    cfg = load_config(None, ["video.start_s=1", "video.end_s=2", "infer.output_hz=25"])
    assert cfg.video.start_s == 1.0 and cfg.infer.output_hz == 25.0
    assert config_hash(load_config(None, [])) == config_hash(
        load_config(None, ["storage.retry_s=5"])
    )


def test_devices_checked_before_work():
    for bad in ("gpu", "cuda:banana", "tpu"):
        with pytest.raises(ValueError, match="device"):
            check_device(bad)
    check_device("cpu", "float16")  # runs (slowly) on CPUs: allowed, documented
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda", "float32")


# --------------------------------------------------------------------------------------------
# Timelines only (item 3)


def test_out_without_timelines_is_empty_and_other_tables_are_never_read(tmp_path, caplog):
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    pq.write_table(pa.table({"video_id": ["v"], "uri": ["a.mp4"], "status": ["no_face"]}),
                   out / "videos" / "v.parquet")  # fmt: skip
    pq.write_table(pa.table({"video_id": ["v"], "uri": ["a.mp4"]}), out / "manifest.parquet")
    with caplog.at_level(logging.WARNING):
        table = read_timelines(str(out))
    assert table.num_rows == 0 and table.schema.equals(TIMELINES)
    assert "holds no timelines" in caplog.text
    assert (
        run_sql("SELECT count(*) AS n FROM timelines", open_timelines(str(out)))["n"][0].as_py()
        == 0
    )
    for not_timelines in (out / "manifest.parquet", out / "videos"):
        with pytest.raises(ValueError, match="not a timelines table"):
            open_timelines(str(not_timelines))
    full = write_job_output(tmp_path / "full")
    assert open_timelines(str(full)).count_rows() > 0


# --------------------------------------------------------------------------------------------
# SQL limits (item 9)


def test_sql_limits():
    t = happy_video()
    with pytest.raises(QueryLimit, match="characters"):
        run_sql("SELECT 1 " + " " * 30_000, t)
    with pytest.raises(QueryLimit, match="nests 300 levels"):
        run_sql("SELECT " + "(SELECT " * 300 + "1" + ")" * 300, t)
    # Brackets inside string literals are not nesting.
    assert run_sql("SELECT '" + "(" * 100 + "' AS s", t).num_rows == 1
    start = time.monotonic()
    with pytest.raises(QueryLimit, match="ran past its 0.5 s"):
        run_sql("SELECT count(*) FROM range(1000000000000)", t, SqlLimits(timeout_s=0.5))
    assert time.monotonic() - start < 10
    with pytest.raises(QueryLimit, match="memory limit"):
        run_sql(
            "SELECT list(x::VARCHAR || repeat('x', 50)) FROM range(50000000) r(x)",
            t,
            SqlLimits(memory_mb=64),
        )
    with pytest.raises(QueryLimit, match="more than 1000 rows"):
        run_sql("SELECT * FROM range(5000)", t, SqlLimits(max_rows=1000))
    with pytest.raises(ValueError, match="query failed: .*nocol") as err:
        run_sql("SELECT nocol FROM timelines", t)
    assert "\n" not in str(err.value)
    with pytest.raises(QueryRefused):
        run_sql("SELECT * FROM read_parquet('x.parquet')", t)


# --------------------------------------------------------------------------------------------
# Item 10: MPEG cuts, symlinks in globs, log lines, which Ray


def test_cut_mpeg_program_stream_is_reported(tmp_path: Path):
    src = asset("videos/grid_bbaf2n.mpg")
    data = src.read_bytes()
    cut = tmp_path / "cut.mpg"
    cut.write_bytes(data[: len(data) * 6 // 10])
    for path, expect in ((src, None), (cut, "truncated")):
        with VideoReader(str(path)) as r:
            for _ in r.chunks(25.0):
                pass
            note = decode_warnings(r.info)
        assert (note is None) if expect is None else (expect in note), (path, note)


def test_globs_and_folders_both_give_rows_to_broken_symlinks(tmp_path: Path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").write_bytes(b"x")
    (d / "dangling.mp4").symlink_to(d / "gone.mp4")
    (d / "loop.mp4").symlink_to(d / "loop.mp4")
    by_folder = list_inputs([str(d)])["uri"].to_pylist()
    by_glob = list_inputs([str(d / "*.mp4")])["uri"].to_pylist()
    assert by_folder == by_glob and len(by_glob) == 3


def test_log_records_stay_on_one_line():
    fmt = OneLineFormatter("%(levelname)s %(message)s")
    rec = logging.LogRecord(
        "x", logging.WARNING, "f", 1, "%s: failed", ("a\nb\r\x1b[31m.mp4",), None
    )
    line = fmt.format(rec)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "a\\nb\\r\\x1b[31m.mp4" in line


def test_ray_target_says_what_the_job_does(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_target(None)[0] == "local" and "starting a local Ray" in ray_target(None)[1]
    assert ray_target("auto") == ("auto", "joining the Ray cluster at auto (--ray-address)")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_target(None)[0] == "ray://head:10001"
    assert "RAY_ADDRESS" in ray_target(None)[1]
