"""pipeline/outputs/query.py and `vaerr query`: reading timelines (local, S3), read-only SQL,
outputs."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.outputs.events import find_happy
from pipeline.outputs.query import (
    QueryRefused,
    check_read_only,
    connect,
    format_table,
    open_timelines,
    read_timelines,
    run_sql,
    write_table,
)
from schemas.config import StorageConfig
from schemas.tables import EVENTS, TIMELINES
from tests.test_events import HAPPY_PLANTED, happy_video, spike_video


def write_job_output(root: Path) -> Path:
    """A job's OUT folder as `vaerr infer` leaves it: OUT/timelines/<video_id>.parquet, plus a
    hidden half-written file that readers must skip."""
    tl = root / "timelines"
    tl.mkdir(parents=True)
    for table in (happy_video(), spike_video()):
        vid = table["video_id"][0].as_py()
        pq.write_table(table, tl / f"{vid}.parquet")
    (tl / ".happy.parquet.tmp-1234abcd").write_bytes(b"half a file")
    (root / "videos").mkdir()
    return root


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_job_output(tmp_path / "out")


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Reading


def test_out_folder_timelines_folder_and_file_read_the_same(out: Path):
    n = happy_video().num_rows + spike_video().num_rows
    assert open_timelines(str(out)).count_rows() == n
    assert open_timelines(str(out / "timelines")).count_rows() == n
    assert open_timelines(f"file://{out}/timelines/").count_rows() == n
    assert open_timelines(str(out / "timelines" / "happy.parquet")).count_rows() < n
    assert open_timelines(str(out)).schema.equals(TIMELINES)
    with pytest.raises(FileNotFoundError):
        open_timelines(str(out / "nothing"))
    with pytest.raises(FileNotFoundError):
        open_timelines(str(out / "videos"))  # a folder without Parquet files


def test_one_video_by_id_uri_or_file_name(out: Path):
    ds = open_timelines(str(out))
    by_id = read_timelines(ds, video="happy")
    assert set(by_id["video_id"].to_pylist()) == {"happy"}
    assert read_timelines(ds, video="s3://bucket/videos/happy.mp4").equals(by_id)
    assert read_timelines(ds, video="happy.mp4").equals(by_id)
    assert read_timelines(ds, video="videos/happy.mp4").equals(by_id)
    # Sorted by video, track, time.
    keys = list(zip(by_id["track_id"].to_pylist(), by_id["time_s"].to_pylist()))
    assert keys == sorted(keys)
    with pytest.raises(ValueError, match="no video"):
        read_timelines(ds, video="other.mp4")
    with pytest.raises(ValueError, match="no video"):
        read_timelines(ds, video=".mp4")  # a suffix of the name is not a file name
    # The same file name in two folders is ambiguous; the full URI is not.
    t = happy_video().slice(0, 10)
    other = t.set_column(0, "video_id", pa.array(["other"] * 10)).set_column(
        1, "uri", pa.array(["s3://elsewhere/happy.mp4"] * 10)
    )
    both = pads.dataset(pa.concat_tables([t, other]))
    with pytest.raises(ValueError, match="several"):
        read_timelines(both, video="happy.mp4")
    assert read_timelines(both, video="s3://elsewhere/happy.mp4").num_rows == 10


# --------------------------------------------------------------------------------------------
# SQL


def test_sql_over_local_files(out: Path):
    ds = open_timelines(str(out))
    res = run_sql(
        "SELECT video_id, count(DISTINCT track_id) AS faces, count(*) AS n "
        "FROM timelines GROUP BY video_id ORDER BY video_id",
        ds,
    )
    assert res.to_pylist() == [
        {"video_id": "happy", "faces": 3, "n": 1800},
        {"video_id": "spikes", "faces": 3, "n": 1800},
    ]
    # WITH, window functions, FROM-first, DESCRIBE: all read-only.
    res = run_sql(
        "WITH s AS (SELECT track_id, avg(valence) OVER (PARTITION BY track_id) AS m "
        "FROM timelines WHERE video_id = 'happy') SELECT DISTINCT track_id FROM s "
        "WHERE m > 0.05 ORDER BY 1",
        ds,
    )
    assert res["track_id"].to_pylist() == [0, 1, 2]
    assert run_sql("FROM timelines LIMIT 3", ds).num_rows == 3
    assert "arousal" in run_sql("DESCRIBE timelines", ds)["column_name"].to_pylist()
    assert run_sql("SELECT * FROM range(3)", ds).num_rows == 3


REFUSED = [
    "INSERT INTO timelines SELECT * FROM timelines",
    "CREATE TABLE t AS SELECT * FROM timelines",
    "DROP VIEW timelines",
    "COPY timelines TO '/tmp/vaerr_leak.csv'",
    "COPY (SELECT 1) TO 'out.parquet'",
    "EXPORT DATABASE '/tmp/vaerr_db'",
    "ATTACH '/tmp/vaerr.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "SELECT 1; SELECT 2",
    "SELECT * FROM read_parquet('/etc/hosts')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM parquet_scan('x.parquet')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'timelines.parquet'",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM query('SELECT 42')",
    "WITH x AS (SELECT * FROM read_json('/tmp/x.json')) SELECT * FROM x",
    "SELECT * FROM timelines WHERE uri IN (SELECT content FROM read_text('/etc/hosts'))",
    "SELEC 1",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_writes_and_file_reads_are_refused(out: Path, sql: str):
    with pytest.raises(QueryRefused):
        run_sql(sql, open_timelines(str(out)))


def test_the_connection_itself_cannot_reach_files(out: Path):
    """Defence in depth: even without the statement check, the engine refuses."""
    con = connect(open_timelines(str(out)))
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert con.execute("SELECT count(*) FROM timelines").fetchall() == [(3600,)]
    assert check_read_only("select 1 ;") == "select 1 ;"


def test_sql_on_a_local_s3_server(s3_server: str, s3_bucket: str, tmp_path: Path):
    import s3fs

    local = write_job_output(tmp_path / "out")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.put(str(local / "timelines") + "/", f"{s3_bucket}/jobs/run1/timelines/", recursive=True)
    storage = StorageConfig(endpoint_url=s3_server)
    uri = f"s3://{s3_bucket}/jobs/run1"
    ds = open_timelines(uri, storage)
    res = run_sql("SELECT count(*) AS n, max(arousal) AS a FROM timelines", ds)
    assert res["n"].to_pylist() == [3600]
    # The events over S3 are those over the local copy.
    assert find_happy(read_timelines(uri, storage)).equals(find_happy(read_timelines(str(local))))
    # Results can go back to S3, in every format.
    for ext in ("parquet", "csv", "json"):
        write_table(res, f"s3://{s3_bucket}/results/r.{ext}", storage)
    with fs.open(f"{s3_bucket}/results/r.parquet", "rb") as f:
        assert pq.read_table(f).equals(res)


def test_cli_over_s3(s3_server: str, s3_bucket: str, tmp_path: Path, capsys):
    import s3fs

    local = write_job_output(tmp_path / "out")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.put(str(local / "timelines") + "/", f"{s3_bucket}/out/timelines/", recursive=True)
    rc = main(
        ["query", "happy", f"s3://{s3_bucket}/out", "-o", f"s3://{s3_bucket}/happy.parquet"]
        + ["--set", f"storage.endpoint_url={s3_server}"]
    )
    assert rc == 0
    summary = last_json(capsys)
    assert summary["rows"] == len(HAPPY_PLANTED) + 1  # + the pleasant surprise of "spikes"
    with fs.open(f"{s3_bucket}/happy.parquet", "rb") as f:
        assert pq.read_table(f).schema == EVENTS


# --------------------------------------------------------------------------------------------
# Output and the command line


def test_write_table_formats(tmp_path: Path):
    events = find_happy(happy_video())
    write_table(events, str(tmp_path / "e.parquet"))
    assert pq.read_table(tmp_path / "e.parquet").equals(events)
    write_table(events, str(tmp_path / "e.csv"))
    csv = pacsv.read_csv(tmp_path / "e.csv")
    assert csv.num_rows == events.num_rows
    assert [json.loads(x) for x in csv["track_ids"].to_pylist()] == events["track_ids"].to_pylist()
    write_table(events, str(tmp_path / "e.json"))
    rows = json.loads((tmp_path / "e.json").read_text())
    assert rows == events.to_pylist()
    with pytest.raises(ValueError, match="parquet"):
        write_table(events, str(tmp_path / "e.xlsx"))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_format_table_ranks_and_cuts():
    t = pa.table({"name": ["a", "b", "c"], "score": [3.14159, 2.0, None]})
    text = format_table(t, limit=2)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "score"]
    assert lines[2].split() == ["a", "3.142"]
    assert "1 more rows" in lines[-1]
    assert "(no rows)" in format_table(t.slice(0, 0))


def test_cli_happy_spikes_sql(out: Path, tmp_path: Path, capsys):
    assert main(["query", "happy", str(out), "-o", str(tmp_path / "h.csv")]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[0].split()[:3] == ["uri", "video_id", "kind"]
    summary = json.loads(lines[-1])
    assert summary == {
        "kind": "happy",
        "videos": 2,
        "rows": len(HAPPY_PLANTED) + 1,
        "output": str(tmp_path / "h.csv"),
    }
    assert pacsv.read_csv(tmp_path / "h.csv").num_rows == summary["rows"]

    # Thresholds reach the detector: a stricter minimum duration finds fewer.
    assert main(["query", "happy", str(out), "--min-seconds", "4.5"]) == 0
    assert last_json(capsys)["rows"] < summary["rows"]
    assert main(["query", "happy", str(out), "--min-faces", "2"]) == 0
    assert last_json(capsys)["rows"] == 1

    assert main(["query", "spikes", str(out), "-o", str(tmp_path / "s.json")]) == 0
    assert last_json(capsys)["rows"] == 2
    assert len(json.loads((tmp_path / "s.json").read_text())) == 2

    sql = "SELECT video_id, count(*) AS n FROM timelines GROUP BY 1 ORDER BY 1"
    assert main(["query", "sql", str(out), sql, "-o", str(tmp_path / "q.parquet")]) == 0
    summary = last_json(capsys)
    assert summary["columns"] == ["video_id", "n"] and summary["rows"] == 2
    assert pq.read_table(tmp_path / "q.parquet").num_rows == 2


def test_cli_refuses_a_writing_statement(out: Path, capsys):
    assert main(["query", "sql", str(out), "DELETE FROM timelines"]) == 2
    assert "only read-only SELECT" in capsys.readouterr().err
    assert main(["query", "sql", str(out), "SELECT * FROM read_parquet('/x')"]) == 2
    assert "read_parquet" in capsys.readouterr().err
