"""Several videos fed to one face pipeline at once (infer.face_videos, pipeline/faces/feed.py):
each video's faces as if it ran alone, on the real RetinaFace weights and the asset clips; a
video that fails among others is one failed status row; the job's timelines unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.faces.extract import FacePipeline
from pipeline.faces.feed import FaceFeed, launch_together
from pipeline.runner import run_inference, stage_specs
from pipeline.stages import FaceStage
from schemas.config import config_hash, load_config
from schemas.stage_columns import END, WINDOW
from tests.conftest import asset, face_overrides
from tests.test_faces import collect

# Three sizes among them: GRID 360x288, the two speakers side by side, the sky clip 360p.
CLIPS = ["grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4", "grid_lbbc2a.mpg", "noface_sky_360p.mp4"]
SMALL = ["video.end_s=1.2", "infer.window_frames=20", "infer.hop_frames=10"]


@pytest.fixture(scope="module")
def pipe() -> FacePipeline:
    return FacePipeline(load_config(None, face_overrides() + SMALL))


class Counting:
    """A detector or a network, as it is, counting the frames (faces) of each call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x):
        self.calls.append(len(x))
        return self.model(x)

    def launch(self, x):  # a detector's queued call (what the feed makes)
        self.calls.append(len(x))
        return self.model.launch(x)

    def __getattr__(self, name):  # a detector's device, points, boxes, roi_search
        return getattr(self.model, name)


def test_videos_fed_together_get_their_own_faces(pipe):
    """Batch invariance: each video's rows from a feed of four (three frame sizes) equal its
    rows alone (boxes and landmarks within 1e-5, crops within one grey level), and the
    detector ran once per frame size a round, not once per video."""
    uris = [str(asset(f"videos/{c}")) for c in CLIPS]
    counting = Counting(pipe.detector)
    together = FacePipeline(pipe.cfg, counting, pipe.landmarker, pipe.mean_face)
    got: dict[int, list] = {i: [] for i in range(len(uris))}
    done = {}
    for ev in FaceFeed(together, uris):
        assert ev.error is None, ev.error
        if ev.rows is not None:
            assert not ev.done and ev.index not in done  # no rows after a video's end
            got[ev.index].append(ev.rows)
        if ev.done:
            done[ev.index] = (ev.run.frames, ev.run.tracks)
    assert sorted(done) == list(range(len(uris)))
    for i, uri in enumerate(uris):
        run, solo = collect(pipe, uri)
        assert done[i] == (run.frames, run.tracks) == (30, run.tracks)
        if solo is None:  # the sky clip
            assert got[i] == [] and run.tracks == 0
            continue
        rows = {k: np.concatenate([p[k] for p in got[i]]) for k in got[i][0]}
        for k in ("track_id", "frame_index", "interpolated"):
            np.testing.assert_array_equal(rows[k], solo[k])
        for k in ("box_xyxy", "landmarks", "det_score", "time_s"):
            np.testing.assert_allclose(rows[k], solo[k], atol=1e-5, rtol=0)
        diff = np.abs(rows["crop"].astype(int) - solo["crop"].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # 30 frames at chunks of 32: one round; 3 frame sizes -> 3 calls for 4 videos' frames
    assert len(counting.calls) == 3 and sum(counting.calls) == 4 * 30


def feed_rows(pipe: FacePipeline, uris: list[str]) -> dict[int, dict]:
    """Each video's rows from one FaceFeed of `uris`, concatenated."""
    got: dict[int, list] = {i: [] for i in range(len(uris))}
    for ev in FaceFeed(pipe, uris):
        assert ev.error is None, ev.error
        if ev.rows is not None:
            got[ev.index].append(ev.rows)
    return {i: {k: np.concatenate([p[k] for p in g]) for k in g[0]} for i, g in got.items()}


def test_fan_runs_once_over_every_videos_faces(pipe):
    """fan68 fed several videos: FAN's batches hold the faces of all of them (one call for
    the round's 6 faces of two videos of two frame sizes, where alone each video makes its
    own), and each video's landmarks and crops are those it gets alone. No FAN weights
    exist here: a random one-hourglass FAN (the plumbing is FAN(4)'s)."""
    from face_alignment.models import FAN

    from pipeline.faces.landmarks import Fan68

    torch.manual_seed(0)
    cfg = load_config(None, face_overrides("fan68") + [
        "faces.landmarks.batch_size=16", "faces.track.min_length=2", "video.end_s=0.08",
    ])  # fmt: skip
    net = Counting(FAN(1).eval())
    fan = Fan68(cfg.faces.landmarks, net=net)
    fed = FacePipeline(cfg, pipe.detector, fan, pipe.mean_face)
    uris = [str(asset(f"videos/{c}")) for c in CLIPS[:2]]  # 1 face and 2, 2 frames each
    together = feed_rows(fed, uris)
    assert net.calls == [6]
    for i, uri in enumerate(uris):
        net.calls.clear()
        _, solo = collect(fed, uri)
        assert net.calls == [2 * (i + 1)]
        rows = together[i]
        assert rows["landmarks"].shape == solo["landmarks"].shape == (2 * (i + 1), 68, 2)
        np.testing.assert_array_equal(rows["track_id"], solo["track_id"])
        np.testing.assert_allclose(rows["landmarks"], solo["landmarks"], atol=1e-3, rtol=0)
        diff = np.abs(rows["crop"].astype(int) - solo["crop"].astype(int))
        assert diff.max() <= 1


def test_launch_together_splits_by_size_and_keeps_order(pipe):
    a = torch.zeros((2, 64, 80, 3), dtype=torch.uint8)
    b = torch.zeros((3, 48, 48, 3), dtype=torch.uint8)
    empty = torch.zeros((0, 64, 80, 3), dtype=torch.uint8)
    counting = Counting(pipe.detector)
    out = launch_together(counting, [a, empty, b, a]).result()
    assert [len(o) for o in out] == [2, 0, 3, 2]
    assert sorted(counting.calls) == [3, 4]  # the two 64x80 inputs in one call


def rows_of(batches: list[dict]) -> tuple[dict, dict]:
    """(window rows by (uri, track, start), end rows by uri) of a face stage's output."""
    windows, ends = {}, {}
    for b in batches:
        for i, kind in enumerate(b["kind"]):
            uri = str(b["uri"][i])
            if kind == WINDOW:
                windows[(uri, int(b["track_id"][i]), int(b["start"][i]))] = b["crops"][i]
            elif kind == END:
                assert uri not in ends  # exactly one end row per video
                ends[uri] = {k: b[k][i] for k in ("status", "frames", "tracks", "windows")}
    return windows, ends


def test_a_failing_video_among_others_is_one_failed_row(pipe, tmp_path):
    """The face stage given five videos at once (one missing, one not a video): the good
    ones give the windows and end rows they give alone; each bad one exactly one failed end
    row (run again alone, with its own retries)."""
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"\x00" * 4096)
    uris = [str(asset(f"videos/{c}")) for c in CLIPS[:2]]
    uris += [str(bad), str(tmp_path / "missing.mp4"), str(asset(f"videos/{CLIPS[3]}"))]
    stage = FaceStage(pipe.cfg, pipe)
    batch = {
        "video_id": np.array([f"v{i}" for i in range(len(uris))], object),
        "uri": np.array(uris, object),
        "source_etag": np.array([""] * len(uris), object),
    }
    win, ends = rows_of(list(stage(batch)))
    assert [str(ends[u]["status"]) for u in uris] == ["ok", "ok", "failed", "failed", "no_face"]
    solo_win, solo_ends = rows_of(
        [b for i in range(len(uris)) for b in stage({k: v[i : i + 1] for k, v in batch.items()})]
    )
    assert set(win) == set(solo_win) and len(win) > 0
    for key, crops in win.items():
        assert np.abs(crops.astype(int) - solo_win[key].astype(int)).max() <= 1
    for u in uris:
        assert {k: str(v) for k, v in ends[u].items()} == {
            k: str(v) for k, v in solo_ends[u].items()
        }


def job_tables(tmp_path, checkpoint, runs: dict) -> dict:
    """`vaerr infer` on CLIPS once per run {name: (face_videos, runner)} (decode processes for
    names ending in "processes", one face actor): name -> (timelines, status rows, hash)."""
    inputs = [str(asset(f"videos/{c}")) for c in CLIPS]
    tables = {}
    for name, (n, runner) in runs.items():
        procs = [f"infer.decode_processes={name.endswith('processes')}", "infer.face_actors=1"]
        cfg = load_config(None, face_overrides() + SMALL + [f"infer.face_videos={n}", *procs])
        assert stage_specs(cfg, checkpoint)[0].batch_size == n
        out = str(tmp_path / name)
        summary = run_inference(cfg, inputs, out, checkpoint, runner=runner)
        assert (summary["ok"], summary["no_face"]) == (3, 1)
        key = ["uri", "track_id", "time_s"]
        tl = pq.read_table(Path(out) / "timelines").to_pandas().sort_values(key)
        st = pq.read_table(Path(out) / "videos").to_pandas().sort_values("uri")
        tables[name] = (tl.reset_index(drop=True), st.reset_index(drop=True), config_hash(cfg))
    return tables


def assert_same_job(a_table, b_table) -> None:
    """Two job_tables entries: timelines within 1e-5, the same statuses and config_hash."""
    (a, sa, ha), (b, sb, hb) = a_table, b_table
    assert ha == hb and len(a) == len(b) > 0
    assert (a.track_id.values == b.track_id.values).all()
    for col in ("arousal", "valence"):
        np.testing.assert_allclose(a[col].values, b[col].values, atol=1e-5, rtol=0)
    cols = ["uri", "status", "frames", "tracks", "config_hash"]
    assert sa[cols].equals(sb[cols])


def test_the_job_with_videos_fed_together_writes_the_same_timelines(
    tmp_path, tiny_checkpoint, monkeypatch
):
    """`vaerr infer` (local runner) with infer.face_videos=3 against 1: the face stage is
    called with 3 videos, then 1, and writes the same timelines within 1e-5, the same status
    rows and config_hash."""
    fed = []
    together = FaceStage._together
    monkeypatch.setattr(
        FaceStage, "_together", lambda st, heads: (fed.append(len(heads)), together(st, heads))[1]
    )
    runs = {"1-local": (1, "local"), "3-local": (3, "local")}
    tables = job_tables(tmp_path, tiny_checkpoint, runs)
    assert fed == [3]  # the local runner's calls: 3 videos together, then the 4th alone
    assert_same_job(tables["1-local"], tables["3-local"])


def test_on_ray_a_face_actor_fed_two_videos_decoding_in_processes_agrees(
    tmp_path, tiny_checkpoint, ray_local
):
    """On Ray, the same stage code as one face actor fed 2 videos a call
    (map_batches(batch_size=infer.face_videos)), each video decoding in a worker process of
    its own (infer.decode_processes): the timelines of 1 video a call decoding in threads,
    within 1e-5, the same statuses and config_hash (Ray against Ray: a Ray actor's model runs
    on one thread, so its sums are not the local runner's to the last bit)."""
    runs = {"1-ray": (1, "ray"), "2-ray-processes": (2, "ray")}
    tables = job_tables(tmp_path, tiny_checkpoint, runs)
    assert_same_job(tables["1-ray"], tables["2-ray-processes"])


def test_the_next_chunk_is_detected_while_this_one_is_tracked(pipe, monkeypatch):
    """Host/device overlap within one video (issue 24): chunk k + 1's detections are queued
    on the device before chunk k is tracked and cropped, so a GPU works while the host does;
    the rows equal, bit for bit, those of the chunk-by-chunk `push` loop (nothing queued
    ahead)."""
    from contextlib import ExitStack

    from pipeline.faces.stream import FaceStream

    cfg = load_config(None, face_overrides() + SMALL + ["video.chunk_frames=8"])  # 4 chunks
    events: list[str] = []

    class Order(Counting):
        def launch(self, x):
            events.append("launch")
            return super().launch(x)

    complete = FaceStream.complete

    def tracked(self, *args, **kwargs):
        events.append("complete")
        return complete(self, *args, **kwargs)

    monkeypatch.setattr(FaceStream, "complete", tracked)
    fed = FacePipeline(cfg, Order(pipe.detector), pipe.landmarker, pipe.mean_face)
    uri = str(asset(f"videos/{CLIPS[0]}"))
    run, ahead = collect(fed, uri)
    assert run.frames == 30 and run.tracks == 1
    launch, done = "launch", "complete"
    assert events == [launch, launch, done, launch, done, launch, done, done]

    events.clear()
    plain = FacePipeline(cfg, pipe.detector, pipe.landmarker, pipe.mean_face).run(uri)
    parts = []
    with ExitStack() as stack:
        for chunk in plain.open(stack):
            parts.append(plain.stream.push(chunk))
        parts.append(plain.stream.finish())
    assert events == [done] * 4
    for k in ahead:
        np.testing.assert_array_equal(ahead[k], np.concatenate([p[k] for p in parts]))
