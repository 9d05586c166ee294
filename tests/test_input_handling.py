"""Reliability, round three (issue 23 part A): no input ever vanishes or hangs the job.

A path that exists is that file or folder whatever characters it holds (globs only for names
that do not exist); FIFOs, sockets and devices get a status row unread; every open and read of
a source has a time limit; a failed write (a full disk) never leaves a temporary file, and a
rerun sweeps the ones a killed run left; log lines escape every control and bidi character.

Real parts: tiny videos written with PyAV, real RetinaFace, the local runner, the moto S3 server
behind the fault proxy (tests/faultproxy.py) for stalls; CLI runs are in-process through `main`.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import socket
import threading
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.cli_io import OneLineFormatter
from pipeline.encode import write_video
from pipeline.errors import escape
from pipeline.ids import video_id
from pipeline.manifest import expand_inputs, list_inputs
from pipeline.outputs.verify import verify_output
from pipeline.progress import Progress, set_verbosity
from pipeline.runner import run_inference
from pipeline.source import SourceTimeout, _Watchdog
from pipeline.storage import TEMP_PATTERN, ParquetStream, write_bytes, write_parquet
from pipeline.video import VideoError, VideoReader
from schemas.config import load_config
from tests.conftest import face_overrides
from tests.faultproxy import FaultProxy

FAST = ["video.end_s=0.2", "infer.window_frames=25", "infer.hop_frames=10"]


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> bytes:
    """A 64x64, 3-frame H.264 video without a face (decodes and detects in well under 1 s)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.mp4"
    write_video(path, [np.full((64, 64, 3), 90 + 40 * i, np.uint8) for i in range(3)], 25)
    return path.read_bytes()


def _infer(args: list[str], capsys) -> tuple[int, dict]:
    """`vaerr infer ... --local` in-process: (exit code, the JSON last line)."""
    sets = sum((["--set", s] for s in face_overrides() + FAST), [])
    code = main(["infer", *args, "--local", *sets])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}


def _rows(out: Path) -> dict[str, dict]:
    return {r["uri"]: r for r in pq.read_table(out / "videos").to_pylist()}


def _within(fn, timeout_s: float = 120.0):
    """fn() on a daemon thread; fails the test (instead of hanging it) when it never returns."""
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test
            box["exc"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), f"still blocked after {timeout_s:.0f} s"
    if "exc" in box:
        raise box["exc"]
    return box["value"]


# -- finding 1: inputs with glob characters are taken as named ------------------------------

# (a file name, a folder name, a decoy the name would match as a pattern)
NAMES = {
    "[": ("clip[1].mp4", "batch[2024]", "clip1.mp4"),
    "?": ("what?.mp4", "q?d", "whatX.mp4"),
    "*": ("star*.mp4", "all*", "starX.mp4"),
}


@pytest.mark.parametrize("ch", sorted(NAMES))
def test_existing_names_with_glob_characters_are_taken_as_named(
    ch, tmp_path, tiny_video, tiny_checkpoint, capsys
):
    fname, dname, decoy = NAMES[ch]
    (tmp_path / fname).write_bytes(tiny_video)
    (tmp_path / decoy).write_bytes(tiny_video)  # never picked up by the name above
    (tmp_path / dname).mkdir()
    (tmp_path / dname / "in.mp4").write_bytes(tiny_video)
    inputs = [str(tmp_path / fname), str(tmp_path / dname)]
    out = tmp_path / "out"
    code, summary = _infer([*inputs, "-o", str(out), "--checkpoint", tiny_checkpoint], capsys)
    assert code == 0 and summary["videos"] == 2, summary
    assert set(_rows(out)) == {inputs[0], f"{inputs[1]}/in.mp4"}
    assert all(r["status"] == "no_face" for r in _rows(out).values())
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"] == [
        {"input": inputs[0], "kind": "file", "videos": 1},
        {"input": inputs[1], "kind": "folder", "videos": 1},
    ]
    assert verify_output(str(out), load_config(None, [])) == []


@pytest.mark.parametrize(
    "pattern, glob, expect",
    [
        ("v*.mp4", True, ["va.mp4", "vb.mp4"]),  # asked for: still a glob
        ("v?.mp4", True, ["va.mp4", "vb.mp4"]),
        ("v[ab].mp4", False, ["v[ab].mp4"]),  # --no-glob: a name, missing
        ("nothing*.mp4", True, ["nothing*.mp4"]),  # matches nothing: kept, a failed row
        ("none[0-9].mp4", True, ["none[0-9].mp4"]),
    ],
)
def test_globs_only_where_asked_and_never_empty(pattern, glob, expect, tmp_path):
    for name in ("va.mp4", "vb.mp4"):
        (tmp_path / name).write_bytes(b"x")
    item = str(tmp_path / pattern)
    table, given = expand_inputs([item], glob=glob)
    assert [u.rsplit("/", 1)[-1] for u in table["uri"].to_pylist()] == expect
    kind = "glob" if glob and pattern != "v[ab].mp4" else "missing"
    assert given == [{"input": item, "kind": kind, "videos": len(expect)}]


@pytest.mark.parametrize("content", [[], ["notes.txt", "sub/frame.jpg"]])
def test_folder_without_videos_is_a_clear_error(content, tmp_path, tiny_checkpoint, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    for name in content:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="folder without video files"):
        list_inputs([str(d)])
    code = main(["infer", str(d), "-o", str(tmp_path / "out"), "--checkpoint", tiny_checkpoint])
    assert code == 2 and "folder without video files" in capsys.readouterr().err


@pytest.mark.parametrize("lost", ["clip.mp4", "ghost.mp4"])
def test_verify_flags_an_input_without_a_status_row(
    lost, tmp_path, tiny_video, tiny_checkpoint, capsys
):
    (tmp_path / "clip.mp4").write_bytes(tiny_video)
    (tmp_path / "other.mp4").write_bytes(tiny_video)
    inputs = [str(tmp_path / n) for n in ("clip.mp4", "ghost.mp4", "other.mp4")]
    out = tmp_path / "out"
    code, summary = _infer([*inputs, "-o", str(out), "--checkpoint", tiny_checkpoint], capsys)
    assert code == 0 and summary["videos"] == 3 and summary["failed"] == 1
    cfg = load_config(None, [])
    assert verify_output(str(out), cfg) == []
    # An OUT that lost an input (its status row and the manifest naming it): run.json still
    # knows what the run was given.
    (out / "videos" / f"{video_id(str(tmp_path / lost))}.parquet").unlink()
    (out / "manifest.parquet").unlink()
    problems = verify_output(str(out), cfg)
    assert any(str(tmp_path / lost) in p and "no status row" in p for p in problems), problems
    run = json.loads((out / "run.json").read_text())
    run["inputs"].append({"input": str(tmp_path / "gone*"), "kind": "glob", "videos": 0})
    (out / "run.json").write_text(json.dumps(run))
    assert any("listed no video" in p for p in verify_output(str(out), cfg))


# -- finding 2: special files never block ---------------------------------------------------


def _special(kind: str, path: Path) -> object:
    """Make a FIFO or a listening unix socket at `path` (relative bind: paths are short)."""
    if kind == "fifo":
        os.mkfifo(path)
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.relpath(path))
    s.listen(1)
    return s


@pytest.mark.parametrize("kind, name", [("fifo", "FIFO"), ("socket", "socket")])
def test_special_files_get_a_status_row_unread(
    kind, name, tmp_path, tiny_video, tiny_checkpoint, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").write_bytes(tiny_video)
    keep = _special(kind, d / "s.mp4")
    out = tmp_path / "out"
    try:  # in a folder and named explicitly (one row: same URI)
        args = [str(d), str(d / "s.mp4"), "-o", str(out), "--checkpoint", tiny_checkpoint]
        code, summary = _within(lambda: _infer(args, capsys))
    finally:
        if keep is not None:
            keep.close()
    rows = _rows(out)
    assert code == 0 and summary["videos"] == 2 and summary["failed"] == 1, summary
    bad = rows[str(d / "s.mp4")]
    assert bad["status"] == "failed" and bad["reason"] == f"not a regular file: {name}"
    assert bad["failure_kind"] == "video" and rows[str(d / "a.mp4")]["status"] == "no_face"
    assert json.loads((out / "run.json").read_text())["state"] == "completed"


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda p: os.mkfifo(p) or str(p), "FIFO"),
        (lambda p: "/dev/zero", "character device"),  # would never end
    ],
)
def test_video_reader_refuses_special_files_at_once(make, name, tmp_path):
    uri = make(tmp_path / "v.mp4")
    with pytest.raises(VideoError, match=f"^not a regular file: {name}$"):
        _within(lambda: VideoReader(uri), 60)


@pytest.mark.parametrize("stall", ["open", "read"])
def test_a_stalled_source_ends_as_a_status_row(
    stall, tmp_path, tiny_video, tiny_checkpoint, s3_server, s3_bucket
):
    """The store stops answering for one video (its HEAD: the open, or its GETs: the reads):
    the run still completes, that video's row says it timed out (pending: a rerun retries)."""
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="in/stuck.mp4", Body=tiny_video)
    local = tmp_path / "ok.mp4"
    local.write_bytes(tiny_video)
    release = threading.Event()
    proxy = FaultProxy(s3_server).start()
    method = "HEAD" if stall == "open" else "GET"
    seen = []

    def on_request(m: str, p: str) -> None:
        if m == method and p.split("?")[0].endswith("/in/stuck.mp4"):
            seen.append(m)
            if stall == "read" or len(seen) > 1:  # the listing's HEAD answers, the open's not
                release.wait(60)

    proxy.on_request = on_request
    sets = [f"storage.endpoint_url={proxy.url}", "storage.source_timeout_s=1", "storage.retry_s=0"]
    cfg = load_config(None, face_overrides() + FAST + sets)
    out = tmp_path / "out"
    inputs = [f"s3://{s3_bucket}/in/stuck.mp4", str(local)]
    try:
        summary = _within(lambda: run_inference(cfg, inputs, str(out), tiny_checkpoint,
                                                runner="local"))  # fmt: skip
    finally:
        release.set()
        proxy.stop()
    rows = _rows(out)
    stuck = rows[inputs[0]]
    assert stuck["status"] == "failed" and "SourceTimeout" in stuck["reason"], stuck
    assert stuck["failure_kind"] == "environment" and summary["pending"] == 1
    assert rows[str(local)]["status"] == "no_face"


def test_watchdog_bounds_a_read_that_never_returns():
    r, w = os.pipe()  # nothing is ever written: a plain read would block forever
    try:
        dog = _Watchdog(0.2, "reading the pipe")
        assert dog.call(lambda: 7) == 7
        with pytest.raises(SourceTimeout, match="no answer within 0.2 s"):
            _within(lambda: dog.call(os.read, r, 10), 30)
        with pytest.raises(SourceTimeout, match="never returned"):
            dog.call(lambda: 7)  # the file is stuck: later calls fail at once
        dog.stop(lambda: None)
    finally:
        os.close(w)  # the stuck read returns b"" and the thread ends
        os.close(r)


@pytest.mark.parametrize("value", [0, -1, 3601, float("inf")])
def test_source_timeout_is_bounded(value):
    with pytest.raises(ValueError):
        load_config(None, [f"storage.source_timeout_s={value}"])


# -- finding 8: a full disk never leaves a temporary file ------------------------------------


class _FullDisk(io.FileIO):
    """A real file on disk whose writes fail like a full disk's (ENOSPC)."""

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    """Local writes of temporary files (storage.temp_name) hit a full disk: the temporary file
    is created, and every write to it, or the flush of close(), raises ENOSPC."""
    import fsspec.implementations.local as local

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and TEMP_PATTERN.match(os.path.basename(path)):
            return io.BufferedWriter(_FullDisk(path, "w"))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(local, "open", fake_open, raising=False)


def _stream(uri: str, t: pa.Table) -> None:
    """ParquetStream as its callers use it (pipeline/faces/export.py): discard on failure."""
    s = ParquetStream(uri, t.schema)
    try:
        s.write(t)
        s.close()
    except OSError:
        s.close(ok=False)
        raise


BIG = pa.table({"x": np.arange(50_000)})
WRITES = {
    "bytes_big": lambda uri: write_bytes(uri, b"x" * 100_000),  # fails in write()
    "bytes_small": lambda uri: write_bytes(uri, b"x" * 10),  # fails in close()'s flush
    "parquet": lambda uri: write_parquet(uri, BIG),
    "stream": lambda uri: _stream(uri, BIG),
}


@pytest.mark.parametrize("how", sorted(WRITES))
def test_full_disk_leaves_no_temporary_file(how, tmp_path, full_disk):
    uri = str(tmp_path / "d" / "out.parquet")
    with pytest.raises(OSError) as info:
        WRITES[how](uri)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path / "d") == []  # neither the file nor its temporary


@pytest.mark.parametrize("where", ["videos", "timelines", "."])
def test_rerun_sweeps_its_stray_temporary_files(
    where, tmp_path, tiny_video, tiny_checkpoint, capsys
):
    (tmp_path / "a.mp4").write_bytes(tiny_video)
    out = tmp_path / "out"
    (out / where).mkdir(parents=True)
    stray = out / where / ".0123456789abcdef.parquet.tmp-0a1b2c3d"
    stray.write_bytes(b"PAR1 half written")
    others = [out / where / n for n in (".notes.tmp-mine", "x.parquet.tmp-0a1b2c3d")]
    for p in others:
        p.write_bytes(b"not ours")
    code, _ = _infer([str(tmp_path / "a.mp4"), "-o", str(out), "--checkpoint", tiny_checkpoint],
                     capsys)  # fmt: skip
    assert code == 0 and not stray.exists() and all(p.exists() for p in others)


# -- finding 11: log lines escape every control and bidi character ---------------------------

HOSTILE = {
    "tab": ("a\tb.mp4", "a\\tb.mp4"),
    "rlo": ("evil\u202egnp.mp4", "evil\\u202egnp.mp4"),
    "rlm": ("x\u200fy.mp4", "x\\u200fy.mp4"),
    "c1": ("n\x85l.mp4", "n\\x85l.mp4"),
    "line_sep": ("p\u2028q.mp4", "p\\u2028q.mp4"),
    "undecodable": ("b\udcffd.mp4", "b\\udcffd.mp4"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_log_lines_escape_control_and_bidi_characters(case, tmp_path):
    name, shown = HOSTILE[case]
    fmt = OneLineFormatter("%(levelname)s %(message)s")
    rec = logging.LogRecord("x", logging.INFO, "f", 1, "%s: failed", (f"/d/{name}",), None)
    line = fmt.format(rec)
    assert line == f"INFO /d/{shown}: failed" and line.isprintable()
    # The per-video line of `vaerr -v` too.
    set_verbosity(1)
    try:
        buf = io.StringIO()
        with Progress("infer", 1, stream=buf, tty=False) as bar:
            bar.video_done(3, f"/d/{name}", "ok")
    finally:
        set_verbosity(0)
    assert f"infer: /d/{shown}: ok, 3 frames" in buf.getvalue()
    assert all(c.isprintable() for c in buf.getvalue().replace("\n", ""))
    assert escape("plain é 日本 name.mp4") == "plain é 日本 name.mp4"  # printable stays


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"path": ["a.mp4"]}), "has no `uri` column"),
        (pa.table({"uri": [1, 2]}), "holds int64, not strings"),
        (pa.table({"uri": ["a.mp4", None]}), "1 of 2 rows have a null or empty `uri`"),
        (None, "is not a readable Parquet file"),
    ],
    ids=["no-uri-column", "numbers", "null", "not-parquet"],
)
def test_a_bad_manifest_is_named_with_what_is_wrong(tmp_path, table, message):
    name = tmp_path / "manifest.parquet"
    if table is None:
        name.write_bytes(b"uri\na.mp4\n")  # a CSV under a Parquet name
    else:
        pq.write_table(table, name)
    with pytest.raises(ValueError, match=f"manifest {name}.*{message}"):
        list_inputs([str(name)])
