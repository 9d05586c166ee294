"""Decoding in worker processes (infer.decode_processes, pipeline/faces/procdecode.py): the same
chunks as in-process decoding, byte for byte, in RGB and in planes; the same face rows; a bad
video's own error; a killed worker is one environment failure and the next video gets a new
process; a video stopped early leaves its worker ready for the next."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from pipeline.errors import VideoError
from pipeline.faces.extract import FacePipeline
from pipeline.faces.feed import FaceFeed
from pipeline.faces.procdecode import DecodeProcesses, DecodeWorkerDied
from pipeline.status import ENVIRONMENT_FAILURE, failure_kind
from pipeline.video import VideoReader, frames_per_chunk
from schemas.config import load_config
from tests.conftest import asset, face_overrides
from tests.test_faces import collect

FPS, END, CHUNK, MB = 25.0, 1.0, 8, 256


@pytest.fixture(scope="module")
def procs():
    p = DecodeProcesses()
    yield p
    p.close()


def in_process(uri: str, planes: bool) -> tuple[list, object]:
    with VideoReader(uri) as r:
        n = frames_per_chunk(r.info, CHUNK, MB)
        return list(r.chunks(FPS, None, END, n, planes=planes)), r.info


def in_worker(procs: DecodeProcesses, uri: str, planes: bool) -> tuple[list, object]:
    video = procs.open(uri, None, FPS, None, END, CHUNK, MB, planes)
    try:
        return list(video.chunks()), video.info
    finally:
        video.close()


def same_chunks(a: list, b: list) -> None:
    assert len(a) == len(b) > 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frame_index, y.frame_index)
        np.testing.assert_array_equal(x.time_s, y.time_s)
        if x.frames is not None:
            np.testing.assert_array_equal(x.frames, y.frames)
        assert (x.planes is None) == (y.planes is None)
        if x.planes is not None:
            for k in ("fmt", "matrix", "full_range", "rotation"):
                assert getattr(x.planes, k) == getattr(y.planes, k)
            for k in ("y", "u", "v", "rgb"):
                u, v = getattr(x.planes, k), getattr(y.planes, k)
                assert (u is None) == (v is None)
                if u is not None:
                    np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("planes", [False, True], ids=["rgb", "planes"])
def test_a_worker_hands_over_the_same_chunks(procs, planes):
    """Byte-equal chunks and the same VideoInfo (decoded and emitted frames, gaps), two clips
    of two sizes in one worker, one after the other."""
    for name in ("grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4"):
        uri = str(asset(f"videos/{name}"))
        (a, info_a), (b, info_b) = in_process(uri, planes), in_worker(procs, uri, planes)
        same_chunks(a, b)
        assert vars(info_a) == vars(info_b)
    assert len(procs.workers) == 1


def test_face_rows_are_the_same_with_processes():
    """The face stage fed two videos decoding in processes gives each the rows it gets
    decoding in threads, exactly."""
    over = face_overrides() + ["video.end_s=0.6"]
    threads = FacePipeline(load_config(None, over))
    cfg = load_config(None, [*over, "infer.decode_processes=true"])
    procs = FacePipeline(cfg, threads.detector, threads.landmarker, threads.mean_face)
    uris = [str(asset(f"videos/{c}")) for c in ("grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4")]
    got: dict[int, list] = {0: [], 1: []}
    try:
        for ev in FaceFeed(procs, uris):
            assert ev.error is None, ev.error
            if ev.rows is not None:
                got[ev.index].append(ev.rows)
        run, alone = collect(procs, uris[0])  # one video, the FaceRun path, in a process too
        assert len(procs.decode_processes().workers) == 2
    finally:
        procs.decode_processes().close()
    for i, uri in enumerate(uris):
        _, solo = collect(threads, uri)
        rows = {k: np.concatenate([p[k] for p in got[i]]) for k in got[i][0]}
        for k in solo:
            np.testing.assert_array_equal(rows[k], solo[k])
        if i == 0:
            for k in solo:
                np.testing.assert_array_equal(alone[k], solo[k])
            assert run.info is not None and run.info.emitted_frames == 15


def test_bad_video_killed_worker_and_early_stop(procs, tmp_path):
    """Not a video: the VideoError decoding in process gives. A worker SIGKILLed mid-video:
    DecodeWorkerDied, an environment failure (the job retries the video), and the next
    video gets a new process. A video closed after one chunk: its worker decodes the next
    video whole."""
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(VideoError) as here:
        VideoReader(str(bad))
    with pytest.raises(VideoError) as there:
        procs.open(str(bad), None, FPS, None, END, CHUNK, MB, False)
    assert str(there.value) == str(here.value)

    uri = str(asset("videos/grid_bbaf2n.mpg"))
    video = procs.open(uri, None, FPS, None, END, CHUNK, MB, False)
    chunks = video.chunks()
    next(chunks)
    pid = video.worker.proc.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DecodeWorkerDied) as died:
        list(chunks)
    video.close()
    assert failure_kind(died.value) == ENVIRONMENT_FAILURE

    early = procs.open(uri, None, FPS, None, END, CHUNK, MB, False)
    assert early.worker.proc.pid != pid  # a new process
    first = next(early.chunks())
    early.close()
    whole, _ = in_worker(procs, uri, False)
    assert [len(c.frame_index) for c in whole] == [8, 8, 8, 1]
    np.testing.assert_array_equal(whole[0].frames, first.frames)
    assert len(procs.workers) == 1


def test_a_workers_error_keeps_how_the_job_treats_it():
    """What a worker's exception becomes on its way back: as it is when a pickle round trip
    keeps its kind; a transient fault hidden in a cause chain (which pickling drops) stays
    transient (retried); one that cannot be pickled becomes a RuntimeError naming it."""
    from pipeline.faces.procdecode import _sendable
    from pipeline.storage import is_transient

    err = VideoError("moov atom not found")
    assert type(_sendable(err)) is VideoError and str(_sendable(err)) == str(err)
    wrapped = RuntimeError("reading failed")
    wrapped.__cause__ = ConnectionResetError("reset")
    back = _sendable(wrapped)
    assert isinstance(back, ConnectionError) and is_transient(back)
    assert "RuntimeError: reading failed" in str(back)

    class Local(Exception):  # not importable by name: cannot be unpickled
        pass

    lost = _sendable(Local("x"))
    assert type(lost) is RuntimeError and "Local: x" in str(lost)
    assert failure_kind(lost) != ENVIRONMENT_FAILURE
