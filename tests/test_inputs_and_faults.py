"""Bad inputs, faults, kills and hostile input: every video accounted for exactly once.

Media are generated at test time (synthetic faces, cut and corrupted files); S3 faults come
from a proxy in front of the real test S3 server (tests/faultproxy.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import boto3
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.encode import write_video
from pipeline.outputs.verify import verify_output
from pipeline.runner import run_inference
from pipeline.storage import StorageUnavailable
from schemas.config import load_config
from tests.conftest import asset, face_overrides
from tests.faultproxy import FaultProxy
from training.synth import render_frame, sample_identity

SMALL = ["infer.window_frames=25", "infer.hop_frames=10", "infer.batch_size=4"]


def face_frames(n, size=(360, 640), seed=0, t0=0.0):
    ident = sample_identity(np.random.default_rng(seed))
    return [render_frame(ident, 0.2, 0.3, t0 + i / 25, size=size) for i in range(n)]


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server).start()
    yield p
    p.stop()


def make_bad_folder(d: Path) -> dict[str, tuple[str, str]]:
    """Write one file per bad-input case; returns name -> (expected status, reason part)."""
    d.mkdir()
    rng = np.random.default_rng(0)
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(rng.bytes(20000))
    full = d.parent / "full.mp4"
    write_video(full, face_frames(25), 25)  # moov atom written at the end
    (d / "nomoov.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    mkv = d.parent / "full.mkv"
    write_video(mkv, face_frames(50, seed=1), 25)
    data = mkv.read_bytes()
    (d / "cut_mid.mkv").write_bytes(data[: int(len(data) * 0.6)])
    with wave.open(str(d / "audio_only.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, np.int16).tobytes())
    cv2.imwrite(str(d / "still.jpg"), face_frames(1)[0][..., ::-1])
    write_video(d / "one_frame.mp4", face_frames(1, seed=2), 25)
    write_video(d / "big_4k.mp4", face_frames(6, size=(2160, 3840), seed=3), 25)
    upright = face_frames(25, seed=4)
    write_video(d / "rotated.mp4", [np.rot90(f, -1) for f in upright], 25, rotation=90)
    # Variable frame rate: frame durations between 20 and 70 ms.
    with av.open(str(d / "vfr.mkv"), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for f in face_frames(40, seed=5):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += int(rng.integers(20, 70))
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    corrupt = bytearray((d.parent / "full.mkv").read_bytes())
    mid = len(corrupt) // 2
    corrupt[mid : mid + 3000] = rng.bytes(3000)
    (d / "corrupt_mid.mkv").write_bytes(bytes(corrupt))
    blank = [np.full((360, 640, 3), 90, np.uint8)] * 40
    write_video(d / "late_face.mp4", blank + face_frames(35, seed=6, t0=1.6), 25)
    return {
        "zero.mp4": ("failed", "empty"),
        "random.mp4": ("failed", "decodable"),
        "nomoov.mp4": ("failed", ""),
        "cut_mid.mkv": ("ok", ""),
        "audio_only.wav": ("failed", "no video stream"),
        "still.jpg": ("failed", "still image"),
        "one_frame.mp4": ("ok", ""),
        "big_4k.mp4": ("ok", ""),
        "rotated.mp4": ("ok", ""),
        "vfr.mkv": ("ok", ""),
        "corrupt_mid.mkv": ("ok", ""),
        "late_face.mp4": ("ok", ""),
    }


def test_bad_inputs_in_one_job(tmp_path, proxy, s3_server, s3_bucket, tiny_checkpoint):
    expect = make_bad_folder(tmp_path / "bad")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.upload_file(str(asset("videos/grid_lbbc2a.mpg")), s3_bucket, "in/ok.mpg")
    s3.upload_file(str(asset("videos/grid_lbbc2a.mpg")), s3_bucket, "in/denied.mpg")
    proxy.deny = lambda method, path: "denied.mpg" in path and method in ("GET", "HEAD")
    ghost = str(tmp_path / "bad" / "ghost.mp4")
    # Folders are listed by video extension; the image and the WAV are named explicitly.
    inputs = [
        str(tmp_path / "bad"),
        str(tmp_path / "bad" / "still.jpg"),
        str(tmp_path / "bad" / "audio_only.wav"),
        ghost,
        f"s3://{s3_bucket}/in/ok.mpg",
        f"s3://{s3_bucket}/in/denied.mpg",
        "s3://no-such-bucket-vaerr/a.mp4",
    ]
    cfg = load_config(None, face_overrides() + SMALL + [f"storage.endpoint_url={proxy.url}"])
    out = str(tmp_path / "out")
    summary = run_inference(cfg, inputs, out, tiny_checkpoint, runner="local")
    videos = pq.read_table(out + "/videos").to_pandas().set_index("uri")
    assert summary["videos"] == len(videos) == len(expect) + 4
    for name, (status, reason) in expect.items():
        row = videos.loc[str(tmp_path / "bad" / name)]
        assert row.status == status, (name, row.to_dict())
        assert reason in (row.reason if isinstance(row.reason, str) else ""), (name, row.reason)
    assert videos.loc[ghost].status == "failed" and "not found" in videos.loc[ghost].reason
    assert videos.loc[f"s3://{s3_bucket}/in/ok.mpg"].status == "ok"
    denied = videos.loc[f"s3://{s3_bucket}/in/denied.mpg"]
    assert denied.status == "failed" and "denied" in denied.reason.lower()
    nobucket = videos.loc["s3://no-such-bucket-vaerr/a.mp4"]
    assert nobucket.status == "failed" and "not found" in nobucket.reason
    t = pq.read_table(out + "/timelines").to_pandas()
    by = lambda n: t[t.uri == str(tmp_path / "bad" / n)]  # noqa: E731
    assert len(by("one_frame.mp4")) == 1 and by("one_frame.mp4").time_s.iloc[0] == 0.0
    assert by("late_face.mp4").time_s.min() >= 1.5
    assert videos.loc[str(tmp_path / "bad" / "vfr.mkv")].frames >= 40
    for damaged in ("cut_mid.mkv", "corrupt_mid.mkv"):  # decoded what was decodable, said so
        row = videos.loc[str(tmp_path / "bad" / damaged)]
        assert row.frames < 50 and "stopped" in row.warnings
    # Rotation applied: boxes live in the upright 640x360 frame.
    rot = np.stack(by("rotated.mp4").box_xyxy.to_numpy())
    assert rot[:, 2].max() <= 640 and rot[:, 3].max() <= 360 and rot[:, 2].max() > 360
    assert verify_output(out, cfg) == []


def test_s3_outage_mid_run_is_retried(tmp_path, proxy, s3_server, s3_bucket, tiny_checkpoint):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for i in range(3):
        s3.upload_file(str(asset("videos/grid_swiz3n.mpg")), s3_bucket, f"in/c{i}.mpg")
    outage = {"done": False}

    def on_request(method, path):
        # The first committed status row takes the endpoint away for 3 seconds.
        if method == "PUT" and "/out/videos/" in path and not outage["done"]:
            outage["done"] = True
            proxy.down = True
            threading.Timer(3.0, lambda: setattr(proxy, "down", False)).start()

    proxy.on_request = on_request
    cfg = load_config(
        None,
        face_overrides()
        + SMALL
        + [f"storage.endpoint_url={proxy.url}", "storage.retry_s=60", "video.end_s=1.2"],
    )
    out = f"s3://{s3_bucket}/out"
    summary = run_inference(cfg, [f"s3://{s3_bucket}/in"], out, tiny_checkpoint, runner="local")
    assert outage["done"] and summary["ok"] == 3
    assert verify_output(out, cfg) == []


def test_long_outage_fails_clearly_and_rerun_completes(
    tmp_path, proxy, s3_server, s3_bucket, tiny_checkpoint
):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for i in range(3):
        s3.upload_file(str(asset("videos/grid_swiz3n.mpg")), s3_bucket, f"in/c{i}.mpg")
    seen = {"status_puts": 0}

    def on_request(method, path):
        # Final names only: a write PUTs a hidden temporary key, then copies it to its name.
        if method == "PUT" and "/out/videos/" in path and "/out/videos/." not in path:
            seen["status_puts"] += 1
            if seen["status_puts"] == 2:
                proxy.down = True  # and it stays down

    proxy.on_request = on_request
    extra = [f"storage.endpoint_url={proxy.url}", "storage.retry_s=3", "video.end_s=1.2"]
    cfg = load_config(None, face_overrides() + SMALL + extra)
    out = f"s3://{s3_bucket}/out"
    with pytest.raises(StorageUnavailable, match="storage unreachable"):
        run_inference(cfg, [f"s3://{s3_bucket}/in"], out, tiny_checkpoint, runner="local")
    proxy.down = False
    proxy.on_request = lambda m, p: None
    rerun = run_inference(cfg, [f"s3://{s3_bucket}/in"], out, tiny_checkpoint, runner="local")
    assert rerun["processed"] + rerun["skipped"] == 3 and rerun["skipped"] >= 1
    assert verify_output(out, cfg) == []


def test_killed_worker_is_retried_without_duplicates(ray_local, tmp_path, tiny_checkpoint):
    """The face actor SIGKILLed 1.5 s into its work, fed two videos at a time
    (infer.face_videos=2: the 3 videos go in calls of 2 and 1, so both the fed-together and
    the one-video path run): Ray Data retries the call on a new actor, every video ends ok
    once, and the writer keeps each window once (verify_output)."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"c{i}.mpg").write_bytes(asset("videos/grid_bbaf2n.mpg").read_bytes())
    out = tmp_path / "out"
    killed = {}

    def face_actor_pids():
        """Ray titles actor processes `ray::MapWorker(MapBatches(FaceStage))...`."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if proc.name.isdigit() and b"FaceStage" in cmd and b"MapWorker" in cmd:
                pids.append(int(proc.name))
        return pids

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = face_actor_pids()
            if pids:
                time.sleep(1.5)  # let it start work on a video
                os.kill(pids[0], 9)
                killed["pid"] = pids[0]
                return
            time.sleep(0.2)

    th = threading.Thread(target=killer)
    th.start()
    cfg = load_config(None, face_overrides() + SMALL + ["infer.face_videos=2"])
    summary = run_inference(cfg, [str(src)], str(out), tiny_checkpoint)
    th.join()
    assert killed, "the face actor was never seen"
    assert summary["ok"] == 3
    assert verify_output(str(out), cfg) == []


def test_hostile_names_never_escape_out(tmp_path, s3_server, s3_bucket, tiny_checkpoint):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    clip = str(asset("videos/grid_lbbc2a.mpg"))
    keys = [
        "in/../../escape.mp4",
        "in/vidéo ☃ 😀.mpg",
        "in/" + "x" * 900 + ".mpg",
        "in//abs/etc/passwd.mpg",
    ]
    for k in keys:
        s3.upload_file(clip, s3_bucket, k)
    cfg = load_config(
        None, face_overrides() + SMALL + [f"storage.endpoint_url={s3_server}", "video.end_s=0.8"]
    )
    out_local = tmp_path / "nested" / "out"
    summary = run_inference(
        cfg, [f"s3://{s3_bucket}/in"], str(out_local), tiny_checkpoint, runner="local"
    )
    assert summary["videos"] >= 3
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(out_local in p.parents for p in written)
    names = {p.relative_to(out_local).as_posix() for p in written}
    for n in names:
        assert n in ("config.yaml", "run.json", "manifest.parquet") or (
            n.split("/")[0] in ("timelines", "videos") and len(n.split("/")[1]) == 24
        ), n
    assert verify_output(str(out_local), cfg) == []


def test_credentials_never_leak(
    tmp_path, s3_server, s3_bucket, tiny_checkpoint, caplog, capsys, proxy
):
    secret = "vaerrSECRETvalue9d8f7"
    key_id = "AKIAVAERRTESTKEY123"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.upload_file(str(asset("videos/grid_lbbc2a.mpg")), s3_bucket, "in/a.mpg")
    s3.upload_file(str(asset("videos/grid_lbbc2a.mpg")), s3_bucket, "in/denied.mpg")
    proxy.deny = lambda method, path: "denied" in path
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    code = main(
        [
            "infer",
            f"s3://{s3_bucket}/in",
            "-o",
            str(out),
            "--local",
            "--checkpoint",
            tiny_checkpoint,
            "--set",
            f"storage.secret={secret}",
            "--set",
            f"storage.key={key_id}",
            "--set",
            f"storage.endpoint_url={proxy.url}",
            "--set",
            "video.end_s=0.8",
        ]
        + sum((["--set", s] for s in face_overrides() + SMALL), [])
    )
    assert code == 0
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()]
    texts += [str(pq.read_table(out / "videos").to_pylist())]
    for t in texts:
        assert secret not in t and key_id not in t


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "infer",
            str(tmp_path),
            "-o",
            str(out),
            "--checkpoint",
            "x.pt",
            "--set",
            "infer.batch_size=0",
        ]
    )
    assert code == 2 and "infer.batch_size" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_thirty_minute_video_streams_in_bounded_memory(tmp_path, face_cfg):
    """45,000 analysis frames (25 fps) at 64x64: the face stage's buffers stay bounded and RSS
    stays flat. The file holds 30 minutes at 5 fps (9,000 frames: a fifth of the encoding),
    which the reader resamples to 25 fps as it does any slower source."""
    from pipeline.faces.extract import FacePipeline

    path = tmp_path / "long.mp4"
    frame = np.full((64, 64, 3), 120, np.uint8)
    write_video(path, (frame for _ in range(30 * 60 * 5)), 5, crf=35)
    cfg = load_config(
        None, face_overrides() + ["faces.detector.every_k=5", "video.chunk_frames=64"]
    )

    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    from pipeline.video import VideoReader

    samples, frames = [], 0
    stream = FacePipeline(cfg).stream(25)
    with VideoReader(str(path)) as r:
        for i, chunk in enumerate(r.chunks(25, chunk_frames=64)):
            stream.push(chunk)
            frames += len(chunk.frame_index)
            if i % 50 == 0:
                samples.append(rss_mb())
    stream.finish()
    assert frames == 45000
    assert stream.max_buffered <= 64 + 40
    assert max(samples[2:]) - samples[2] < 60, samples
