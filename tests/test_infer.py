"""The main job end to end on a real local Ray and a real S3 API (moto), with real clips."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.runner import run_inference, stage_specs
from pipeline.stages import FACE_STAGE_OUTPUT, MODEL_STAGE_OUTPUT, FaceStage, ModelStage
from pipeline.writer import steady_rate
from schemas.config import config_hash, load_config
from schemas.stage_columns import FACE_COLUMNS, MODEL_COLUMNS
from schemas.tables import TIMELINES, VIDEOS
from tests.conftest import REPO, asset, face_overrides

# The 1080p HEVC no-face clip is left out: decoding it to no_face is
# tests/test_faces.py::test_sky_clips_have_no_face; here the 360p one proves the same status.
CLIPS = [
    "grid_bbaf2n.mpg",
    "grid_lbbc2a.mpg",
    "grid_swiz3n.mpg",
    "grid_two_speakers_sbs.mp4",
    "noface_sky_360p.mp4",
]
# The first CUT_S seconds of each clip, short windows so they still get several overlapping
# windows (40 frames: windows at 0, 10 and 20).
CUT_S = 1.6
SMALL = [
    "infer.window_frames=20",
    "infer.hop_frames=10",
    "infer.batch_size=4",
    f"video.end_s={CUT_S}",
]


def cfg_with(*extra):
    return load_config(None, face_overrides() + SMALL + list(extra))


def rows_per_track(hz: float = 10.0) -> int:
    """Timeline rows of one face track over the first CUT_S seconds at `hz`."""
    return round(CUT_S * hz)


def check_tables(timelines, videos, expect):
    assert timelines.schema.equals(TIMELINES) and videos.schema.equals(VIDEOS)
    v = videos.to_pandas().set_index("uri")
    assert len(v) == len(expect) and v.index.is_unique
    for uri, status in expect.items():
        assert v.loc[uri, "status"] == status, (uri, v.loc[uri].to_dict())
        if status == "ok":
            assert v.loc[uri, "reason"] is None or v.loc[uri, "reason"] != v.loc[uri, "reason"]
        else:
            assert v.loc[uri, "reason"]
    t = timelines.to_pandas()
    assert not t[["arousal", "valence", "det_score", "time_s"]].isna().any().any()
    assert t.arousal.between(-1, 1).all() and t.valence.between(-1, 1).all()
    assert t.untrained.all()
    assert not t.duplicated(["video_id", "track_id", "time_s"]).any()
    assert set(t.uri) == {u for u, s in expect.items() if s == "ok"}
    for (_, _), g in t.groupby(["uri", "track_id"]):
        # CUT_S s at 10 Hz: 0.0, 0.1, ... CUT_S - 0.1 s
        n = rows_per_track()
        np.testing.assert_allclose(np.sort(g.time_s.values), np.arange(n) / 10, atol=1e-9)
    return t, v


def test_infer_over_s3_on_ray(ray_local, s3_server, s3_bucket, tiny_checkpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for name in CLIPS:
        s3.upload_file(str(asset(f"videos/{name}")), s3_bucket, f"in/{name}")
    s3.put_object(Bucket=s3_bucket, Key="in/corrupt.mp4", Body=b"\x00\x00\x00\x18ftypmp42" * 50)
    s3.upload_file(tiny_checkpoint, s3_bucket, "models/tiny.pt")
    cfg = cfg_with(f"storage.endpoint_url={s3_server}")
    out = f"s3://{s3_bucket}/out"
    summary = run_inference(cfg, [f"s3://{s3_bucket}/in"], out, f"s3://{s3_bucket}/models/tiny.pt")
    assert summary["ok"] == 4 and summary["no_face"] == 1 and summary["failed"] == 1

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    timelines = pq.read_table(f"{s3_bucket}/out/timelines", filesystem=fs)
    videos = pq.read_table(f"{s3_bucket}/out/videos", filesystem=fs)
    expect = {f"s3://{s3_bucket}/in/{n}": "ok" if "grid" in n else "no_face" for n in CLIPS}
    expect[f"s3://{s3_bucket}/in/corrupt.mp4"] = "failed"
    t, v = check_tables(timelines, videos, expect)
    two = t[t.uri.str.endswith("two_speakers_sbs.mp4")]
    assert sorted(two.track_id.unique()) == [0, 1]
    run = json.loads(fs.cat(f"{s3_bucket}/out/run.json"))
    assert run["untrained"] is True and run["config"]["infer"]["window_frames"] == 20
    assert "testing-secret" not in fs.cat(f"{s3_bucket}/out/run.json").decode()


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4", "noface_sky_360p.mp4"):
        shutil.copy(asset(f"videos/{name}"), d / name)
    (d / "notes.txt").write_text("not a video: ignored by the folder listing")
    return d


def test_local_folder_rerun_and_config_change(ray_local, folder, tmp_path, tiny_checkpoint):
    out = str(tmp_path / "out")
    cfg = cfg_with()
    first = run_inference(cfg, [str(folder)], out, tiny_checkpoint)
    assert (first["processed"], first["ok"], first["no_face"]) == (3, 2, 1)
    t1 = pq.read_table(out + "/timelines")
    check_tables(
        t1,
        pq.read_table(out + "/videos"),
        {
            str(folder / "grid_bbaf2n.mpg"): "ok",
            str(folder / "grid_two_speakers_sbs.mp4"): "ok",
            str(folder / "noface_sky_360p.mp4"): "no_face",
        },
    )
    again = run_inference(cfg, [str(folder)], out, tiny_checkpoint, runner="local")
    assert again["processed"] == 0 and again["skipped"] == 3
    assert pq.read_table(out + "/timelines").equals(t1)  # no duplicates, nothing rewritten
    # A changed config recomputes rather than mixing results.
    changed = cfg_with("infer.output_hz=5")
    third = run_inference(changed, [str(folder)], out, tiny_checkpoint, runner="local")
    assert third["processed"] == 3
    # start-up (to the first result) reported apart from the rate once running, in run.json
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert 0 < run["startup_s"] <= run["wall_s"] and run["startup_s"] == third["startup_s"]
    assert run["steady_frames_per_s"] is None or run["steady_frames_per_s"] > 0
    t3 = pq.read_table(out + "/timelines").to_pandas()
    # 5 Hz instead of 10 Hz, nothing left over: two tracks of one clip, one of the other
    assert len(t3) == 3 * rows_per_track(5) == len(t1.to_pandas()) // 2
    assert (np.round(t3.time_s * 5, 6) % 1 == 0).all()
    forced = run_inference(changed, [str(folder)], out, tiny_checkpoint, runner="local", force=True)
    assert forced["processed"] == 3
    assert pq.read_table(out + "/videos").num_rows == 3


def test_model_batches_follow_where_the_model_runs():
    """infer.batch_size unset: 8 windows a model call where the model stage runs on a CPU,
    32 where it has a GPU (on Ray: its actors ask for one; in process: model.device); a set
    value wins; a runtime size, so config_hash does not move."""

    def windows(runner: str, *sets: str) -> int:
        return stage_specs(load_config(None, list(sets)), "ckpt", runner)[1].batch_size

    assert windows("ray") == windows("local") == 8
    assert windows("ray", "infer.model_num_gpus=0.5") == 32
    assert windows("local", "model.device=cuda") == 32  # the name only: no GPU needed here
    assert windows("ray", "infer.model_num_gpus=0.5", "infer.batch_size=5") == 5
    assert windows("local", "model.device=cuda", "infer.batch_size=5") == 5
    assert config_hash(load_config(None, ["infer.batch_size=5"])) == config_hash(
        load_config(None, [])
    )


def test_ray_and_local_runners_agree(ray_local, tmp_path, tiny_checkpoint, one_torch_thread):
    # One 50-frame window per track over the 40 frames cut, as before issue 21.
    cfg = cfg_with("infer.window_frames=50", "infer.hop_frames=25")
    inputs = [str(asset("videos/grid_two_speakers_sbs.mp4")), str(asset("videos/grid_swiz3n.mpg"))]
    run_inference(cfg, inputs, str(tmp_path / "ray"), tiny_checkpoint)
    run_inference(cfg, inputs, str(tmp_path / "local"), tiny_checkpoint, runner="local")
    key = ["video_id", "track_id", "time_s"]
    a = pq.read_table(tmp_path / "ray" / "timelines").to_pandas().sort_values(key)
    b = pq.read_table(tmp_path / "local" / "timelines").to_pandas().sort_values(key)
    assert len(a) == len(b) == 3 * rows_per_track()
    np.testing.assert_allclose(a.arousal.values, b.arousal.values, atol=1e-5)
    np.testing.assert_allclose(a.valence.values, b.valence.values, atol=1e-5)
    assert (a.emotion.values == b.emotion.values).all()


def test_stage_columns_match_their_declarations(tiny_checkpoint):
    # 20 frames in 50-frame windows: the padding past n is checked below.
    cfg = cfg_with("video.end_s=0.8", "infer.window_frames=50", "infer.hop_frames=25")
    face = FaceStage(cfg)
    batch = {
        "video_id": np.array(["v"], object),
        "uri": np.array([str(asset("videos/grid_lbbc2a.mpg"))], object),
        "source_etag": np.array(["e"], object),
    }
    outs = list(face(batch))
    dims = {"W": cfg.infer.window_frames, "S": cfg.faces.align.crop_size}
    for o in outs:
        assert list(o) == [c.name for c in FACE_COLUMNS] == list(FACE_STAGE_OUTPUT)
        for c in FACE_COLUMNS:  # dtype and per-row shape as declared in schemas/stage_columns.py
            assert o[c.name].dtype == np.dtype(c.dtype), c.name
            assert o[c.name].shape[1:] == c.resolved_shape(dims), c.name
    assert outs[-1]["kind"][-1] == "end" and outs[-1]["status"][-1] == "ok"
    scored = ModelStage(cfg, tiny_checkpoint)(outs[0])
    assert set(scored) == set(MODEL_STAGE_OUTPUT) == {c.name for c in MODEL_COLUMNS}
    for c in MODEL_COLUMNS:
        assert scored[c.name].dtype == np.dtype(c.dtype), c.name
    n = int(outs[0]["n"][0])
    assert np.isfinite(scored["arousal"][0, :n]).all() and np.isnan(scored["arousal"][0, n:]).all()


def test_killed_driver_rerun_completes_exactly_the_rest(tmp_path, tiny_checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        shutil.copy(asset("videos/grid_lbbc2a.mpg"), src / f"clip{i}.mpg")
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "jobs.cli",
        "infer",
        str(src),
        "-o",
        str(out),
        "--local",
        "--checkpoint",
        tiny_checkpoint,
    ]
    one_window = ["infer.window_frames=50", "infer.hop_frames=25", "video.end_s=1.2"]
    for s in face_overrides() + SMALL + one_window:
        args += ["--set", s]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "videos").glob("*.parquet"))) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name for p in (out / "videos").glob("*.parquet")}
    assert 1 <= len(done) < 4, "the kill should land mid-run"
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["processed"] == 4 - len(done) and summary["skipped"] == len(done)
    videos = pq.read_table(out / "videos").to_pandas()
    assert len(videos) == 4 and videos.video_id.is_unique and (videos.status == "ok").all()
    t = pq.read_table(out / "timelines").to_pandas()
    assert not t.duplicated(["video_id", "track_id", "time_s"]).any()
    assert t.video_id.nunique() == 4


def test_steady_rate_leaves_the_first_video_out():
    """Frames after the first commit over the time from first to last commit; None where
    that time is under a second or there is one video."""
    assert steady_rate([(10.0, 50), (12.0, 100), (11.0, 30)]) == (30 + 100) / 2
    assert steady_rate([(3.0, 50), (3.5, 70)]) is None
    assert steady_rate([(3.0, 50)]) is None and steady_rate([]) is None
