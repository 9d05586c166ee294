"""Reliability, round two (issue 13 part A): an outage never loses a video, verify trusts
nothing, failures are classified by type, commits are idempotent per video.

Real parts: the moto S3 server behind the fault proxy (tests/faultproxy.py), real RetinaFace on
real clips, the local runner, Parquet read back; CLI runs are in-process through `main`.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import av
import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from jobs.cli import main
from pipeline.ids import video_id
from pipeline.outputs.verify import verify_output
from pipeline.runner import read_status, run_inference
from pipeline.stages import END, FaceStage
from pipeline.status import ENVIRONMENT_FAILURE, VIDEO_FAILURE, failure_kind
from pipeline.storage import StorageUnavailable, is_transient
from pipeline.video import VideoError
from pipeline.writer import TimelineWriter
from schemas.config import config_hash, load_config
from schemas.tables import VIDEOS, VIDEOS_ADDED
from tests.conftest import asset, face_overrides
from tests.faultproxy import FaultProxy

SMALL = ["infer.window_frames=25", "infer.hop_frames=10", "infer.batch_size=4", "video.end_s=0.8"]
HOSTILE = "connection refused broken pipe timed out.mp4"


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server).start()
    yield p
    p.stop()


def _infer(args: list[str], capsys) -> tuple[int, dict]:
    """`vaerr infer ... --local` in-process: (exit code, the JSON last line)."""
    sets = sum((["--set", s] for s in face_overrides() + SMALL), [])
    code = main(["infer", *args, "--local", *sets])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def _status(out: Path | str) -> dict[str, dict]:
    return {r["uri"].rsplit("/", 1)[-1]: r for r in pq.read_table(f"{out}/videos").to_pylist()}


# -- item 6 and the kinds of failure: by type, never by message text -------------------------


class _Named(Exception):
    pass


def test_failures_classified_by_type_not_text():
    # Text that used to make an error "transient" is user data now: never an outage.
    assert not is_transient(VideoError(f"not found: /data/{HOSTILE}"))
    assert not is_transient(RuntimeError("Connection refused; broken pipe; timed out"))
    assert is_transient(OSError(errno.ECONNREFUSED, "x")) and is_transient(ConnectionResetError())
    assert not is_transient(OSError(errno.EIO, "connection refused"))
    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "GetObject")
    nokey = ClientError({"Error": {"Code": "NoSuchKey", "Message": "timed out"}}, "GetObject")
    assert is_transient(slow) and not is_transient(nokey)
    wrapped = OSError(errno.EIO, "read failed")
    wrapped.__cause__ = slow
    assert is_transient(wrapped)
    env = [MemoryError(), StorageUnavailable("x"), OSError(errno.ENOSPC, "full"), slow]
    env.append(type("RayActorError", (Exception,), {})("the actor died"))
    env.append(av.error.MemoryError(errno.ENOMEM, "decoder"))  # never a "truncated" video
    assert [failure_kind(e) for e in env] == [ENVIRONMENT_FAILURE] * len(env)
    video = [VideoError("no video stream"), ValueError("connection refused"), nokey]
    assert [failure_kind(e) for e in video] == [VIDEO_FAILURE] * len(video)


class _FailingRun:
    info, frames, tracks, stream = None, 0, 0, None

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __iter__(self):
        raise self.exc


class _FailingPipe:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def run(self, uri: str) -> _FailingRun:
        return _FailingRun(self.exc)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (MemoryError(), ENVIRONMENT_FAILURE),
        (type("WorkerCrashedError", (Exception,), {})(), ENVIRONMENT_FAILURE),
        (VideoError("not a decodable video"), VIDEO_FAILURE),
    ],
)
def test_face_stage_end_row_says_the_kind(exc, kind):
    cfg = load_config(None, ["storage.retry_s=0"])
    stage = FaceStage(cfg, pipeline=_FailingPipe(exc))  # type: ignore[arg-type]
    batch = {k: np.array(["v1" if k == "video_id" else "u"], object) for k in ("video_id", "uri")}
    batch["source_etag"] = np.array(["e"], object)
    (end,) = list(stage(batch))
    assert end["kind"][0] == END and end["status"][0] == "failed"
    assert end["failure_kind"][0] == kind


def test_hostile_name_is_not_an_outage(tmp_path, capsys):
    """A missing file and an undecodable one named after outage phrases fail at once as the
    video's own failure: not retried for storage.retry_s, not reported as an outage."""
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / HOSTILE
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    ghost = tmp_path / f"missing {HOSTILE}"
    out = tmp_path / "out"
    code, summary = _infer(
        [str(bad), str(ghost), "-o", str(out), "--checkpoint", _tiny(tmp_path), "--set",
         "storage.retry_s=30"],
        capsys,
    )  # fmt: skip
    assert code == 0 and summary["failed"] == 2 and summary["pending"] == 0
    assert summary["wall_s"] < 25  # retrying "transient" errors would take >= 30 s
    for row in _status(out).values():
        assert row["failure_kind"] == VIDEO_FAILURE and row["attempts"] == 1, row
        assert "unreachable" not in row["reason"] and row["processing_s"] < 5, row
    assert "not found" in _status(out)[f"missing {HOSTILE}"]["reason"]


# -- item 1: an environment failure stays pending; the video's own failure is final ---------


_TINY: dict[str, str] = {}


def _tiny(tmp_path: Path, seed: int = 0) -> str:
    """An untrained ssvaerr_tiny checkpoint from `seed` (different seeds: different model ids)."""
    from pipeline.model.checkpoint import init_checkpoint, save_checkpoint
    from schemas.model import ModelConfig

    path = tmp_path / f"tiny{seed}.pt"
    if not path.exists():
        save_checkpoint(init_checkpoint(ModelConfig(arch="ssvaerr_tiny"), seed=seed), str(path))
    return str(path)


def _outage_case(tmp_path: Path, proxy, s3_server, s3_bucket) -> tuple[list[str], Path, Path]:
    """One clip on S3 behind the proxy and one undecodable local file; (infer args, OUT, bad)."""
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.upload_file(str(asset("videos/grid_swiz3n.mpg")), s3_bucket, "in/good.mpg")
    bad = tmp_path / "undecodable.mp4"
    bad.write_bytes(np.random.default_rng(1).bytes(20000))
    out = tmp_path / "out"
    args = [f"s3://{s3_bucket}/in", str(bad), "-o", str(out), "--checkpoint", _tiny(tmp_path)]
    args += ["--set", f"storage.endpoint_url={proxy.url}", "--set", "storage.retry_s=2"]
    return args, out, bad


@pytest.mark.slow
def test_outage_during_reads_is_pending_then_retried(tmp_path, proxy, s3_server, s3_bucket, capsys):
    """The endpoint drops every connection while the video is read (the client gives up
    within seconds: pipeline/storage/uris.py S3FS_RETRIES): the video stays pending, exit 3; the
    rerun after the outage completes it; the undecodable video is final at once and never
    retried."""
    args, out, bad = _outage_case(tmp_path, proxy, s3_server, s3_bucket)
    outage = {"on": True, "hit": 0}

    def on_request(method, path):  # the endpoint vanishes when the video is read
        if outage["on"] and "/in/good.mpg" in path:
            outage["hit"] += 1
            proxy.down = True

    proxy.on_request = on_request
    code, summary = _infer(args, capsys)
    rows = _status(out)
    assert outage["hit"] and code == 3
    assert summary["pending"] == 1 and summary["failed"] == 1 and "rerun" in summary["note"]
    good, undecodable = rows["good.mpg"], rows["undecodable.mp4"]
    assert good["status"] == "failed" and good["failure_kind"] == ENVIRONMENT_FAILURE
    assert good["attempts"] == 1 and "storage unreachable" in good["reason"]
    assert undecodable["failure_kind"] == VIDEO_FAILURE and undecodable["attempts"] == 1
    cfg = load_config(None, face_overrides() + SMALL + [f"storage.endpoint_url={proxy.url}"])
    assert any("pending a rerun" in p for p in verify_output(str(out), cfg))
    bad_mtime = (out / "videos" / f"{undecodable['video_id']}.parquet").stat().st_mtime_ns

    outage["on"], proxy.down = False, False
    code, summary = _infer(args, capsys)
    rows = _status(out)
    assert code == 0 and (summary["processed"], summary["ok"], summary["pending"]) == (1, 1, 0)
    assert rows["good.mpg"]["status"] == "ok" and rows["good.mpg"]["attempts"] == 2
    assert rows["good.mpg"]["failure_kind"] is None
    assert (out / "videos" / f"{undecodable['video_id']}.parquet").stat().st_mtime_ns == bad_mtime
    assert verify_output(str(out), cfg) == []


def test_environment_failure_is_final_after_max_attempts(
    tmp_path, proxy, s3_server, s3_bucket, capsys
):
    """The store answers 503 ServiceUnavailable while the video is read: pending, then final
    after infer.max_attempts runs (exit 0, reason says so), skipped by later runs until more
    attempts are allowed."""
    args, out, _ = _outage_case(tmp_path, proxy, s3_server, s3_bucket)
    outage = {"on": True}
    proxy.fail = lambda method, path: 503 if outage["on"] and "/in/good.mpg" in path else 0
    args += ["--set", "infer.max_attempts=2"]
    cfg = load_config(None, face_overrides() + SMALL + [f"storage.endpoint_url={proxy.url}"])

    code, summary = _infer(args, capsys)
    good = _status(out)["good.mpg"]
    assert code == 3 and summary["pending"] == 1
    assert good["failure_kind"] == ENVIRONMENT_FAILURE and good["attempts"] == 1

    code, summary = _infer(args, capsys)  # still failing: attempt 2 of 2 is final
    good = _status(out)["good.mpg"]
    assert code == 0 and summary["processed"] == 1 and summary["failed"] == 1
    assert good["attempts"] == 2 and good["failure_kind"] == ENVIRONMENT_FAILURE
    assert "final" in good["reason"]
    assert not [p for p in verify_output(str(out), cfg) if "pending" in p]  # run's limit: 2

    outage["on"] = False
    code, summary = _infer(args, capsys)  # final failures are skipped ...
    assert code == 0 and summary["processed"] == 0
    # ... until more attempts are allowed (max_attempts is not in config_hash).
    code, summary = _infer(args[:-2] + ["--set", "infer.max_attempts=3"], capsys)
    good = _status(out)["good.mpg"]
    assert code == 0 and summary["processed"] == 1 and summary["ok"] == 1
    assert good["status"] == "ok" and good["attempts"] == 3
    assert verify_output(str(out), cfg) == []


def test_max_attempts_does_not_change_config_hash():
    base = load_config(None, [])
    assert config_hash(load_config(None, ["infer.max_attempts=9"])) == config_hash(base)
    with pytest.raises(ValueError, match="max_attempts"):
        load_config(None, ["infer.max_attempts=0"])


# -- items 2 and 5: verify checks the whole OUT; one bad status file blocks nothing ---------


def _two_clips(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("grid_lbbc2a.mpg", "grid_bbaf2n.mpg"):
        shutil.copy(asset(f"videos/{name}"), d / name)
    return d


class _KillAt(logging.Handler):
    """Raises KeyboardInterrupt (Ctrl-C) when the face stage logs its n-th finished video:
    that video's end row is never delivered, as when the driver is killed there."""

    def __init__(self, n: int, out: Path) -> None:
        super().__init__(logging.INFO)
        self.n, self.out, self.seen, self.record_then = n, out, 0, {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("%s: %s ("):
            self.seen += 1
            if self.seen == self.n:
                self.record_then = json.loads((self.out / "run.json").read_text())
                raise KeyboardInterrupt


def test_verify_finds_two_models_in_one_out(tmp_path, capsys):
    src, out = _two_clips(tmp_path), tmp_path / "out"
    cfg = load_config(None, face_overrides() + SMALL)
    first = run_inference(cfg, [str(src)], str(out), _tiny(tmp_path, 0), runner="local")
    assert first["ok"] == 2 and verify_output(str(out), cfg) == []

    # A rerun with checkpoint B, killed after its first video.
    log = logging.getLogger("pipeline.stages")
    kill, level = _KillAt(2, out), log.level
    log.addHandler(kill)
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_inference(cfg, [str(src)], str(out), _tiny(tmp_path, 1), runner="local")
    finally:
        log.removeHandler(kill)
        log.setLevel(level)
    run_b = json.loads((out / "run.json").read_text())
    assert kill.record_then["state"] == "running"  # said so from the start
    assert kill.record_then["run_id"] == run_b["run_id"] and run_b["state"] != "completed"
    rows = pq.read_table(out / "videos").to_pylist()
    models = {r["video_id"]: r["model_id"] for r in rows}
    assert len(set(models.values())) == 2  # one video by A, one by B
    old = next(v for v, m in models.items() if m != run_b["model_id"])

    problems = verify_output(str(out), cfg)
    assert any(old in p and "not the run's model" in p for p in problems), problems
    assert any("never completed" in p for p in problems)
    assert main(["verify", str(out), *sum((["--set", s] for s in SMALL), [])]) == 1
    assert old in capsys.readouterr().out
    assert verify_output(str(out), cfg, allow_mixed=True) == []
    assert main(["verify", str(out), "--allow-mixed"]) == 0
    # Every timeline agrees with its own status row's model even in a mixed OUT.
    tl = pq.read_table(out / "timelines").to_pylist()
    assert all(r["model_id"] == models[r["video_id"]] for r in tl)


def test_unreadable_status_file_blocks_nothing(tmp_path, caplog, capsys):
    src, out = _two_clips(tmp_path), tmp_path / "out"
    cfg = load_config(None, face_overrides() + SMALL)
    ckpt = _tiny(tmp_path)
    assert run_inference(cfg, [str(src)], str(out), ckpt, runner="local")["ok"] == 2
    vid = video_id(str(src / "grid_lbbc2a.mpg"))
    broken = out / "videos" / f"{vid}.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    # The other file is from before failure_kind/attempts existed: still reads, still done.
    other = next(p for p in (out / "videos").iterdir() if p != broken)
    t = pq.read_table(other)
    pq.write_table(t.drop_columns([c for c in VIDEOS_ADDED if c != "warnings"]), other)

    problems = verify_output(str(out), cfg)
    assert [p for p in problems if str(broken) in p and "unreadable" in p], problems
    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        status = read_status(str(out), cfg.storage)
    assert status.num_rows == 1 and status.schema.equals(VIDEOS)
    assert status.column("attempts").null_count == 1
    assert str(broken) in caplog.text

    rerun = run_inference(cfg, [str(src)], str(out), ckpt, runner="local")
    assert (rerun["processed"], rerun["skipped"], rerun["ok"]) == (1, 1, 1)
    assert pq.read_table(broken).column("video_id").to_pylist() == [vid]
    assert verify_output(str(out), cfg) == []


# -- "Also": the writer's commit is idempotent per video --------------------------------------


def _model_rows(stage: FaceStage, rows: list[dict]) -> dict[str, np.ndarray]:
    batch = stage._stack(rows)
    n, w = len(rows), stage.window
    batch.pop("crops")
    return {**batch, "arousal": np.zeros((n, w), np.float32), "valence": np.zeros((n, w), "f4")}


def test_writer_commit_is_idempotent_per_video(tmp_path):
    cfg = load_config(None, ["infer.window_frames=4", "infer.hop_frames=2", "infer.output_hz=25"])
    stage = FaceStage(cfg, pipeline=object())  # type: ignore[arg-type]
    head = {"video_id": "va", "uri": "a.mp4", "source_etag": "e"}
    w = {
        "crop": np.zeros((4, 96, 96), np.uint8),
        "frame_index": np.arange(4, dtype=np.int32),
        "box_xyxy": np.ones((4, 4), np.float32),
        "det_score": np.ones(4, np.float32),
        "interpolated": np.zeros(4, bool),
    }
    win0, win2 = stage._window(head, 0, 0, w), stage._window(head, 0, 2, w)
    end = {**head, "kind": END, "status": "ok", "frames": 6, "tracks": 1, "windows": 2}
    nf = {"video_id": "vb", "uri": "b.mp4", "source_etag": "e", "kind": END}
    nf |= {"status": "no_face", "reason": "no face track found", "frames": 6}
    done: list[str] = []
    writer = TimelineWriter(
        cfg, str(tmp_path), "m", True, on_done=lambda row: done.append(row["video_id"])
    )

    writer.consume(_model_rows(stage, [win0, end]))
    writer.consume(_model_rows(stage, [end, nf]))  # duplicate end before the commit
    writer.consume(_model_rows(stage, [win2, win0]))  # the last window commits va
    writer.consume(_model_rows(stage, [win0, win2, end, nf]))  # everything re-delivered
    assert done == ["vb", "va"] and writer.pending == []
    assert (writer.counts["ok"], writer.counts["no_face"], writer.frames) == (1, 1, 12)
    tl = pq.read_table(tmp_path / "timelines" / "va.parquet").to_pandas()
    assert list(tl.frame_index) == [0, 1, 2, 3]
    rows = pa.concat_tables(
        [pq.read_table(tmp_path / "videos" / f"{v}.parquet") for v in ("va", "vb")]
    ).to_pylist()
    assert [r["attempts"] for r in rows] == [1, 1]
