"""The face pipeline on real clips with real RetinaFace weights (../shared/assets)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import main
from pipeline.faces.align import crop_square
from pipeline.faces.export import export_faces
from pipeline.faces.extract import FacePipeline
from schemas.config import config_hash, load_config
from schemas.tables import CLIPS, TRACKS
from tests.conftest import MEAN_FACE, RETINA, asset, face_overrides
from tests.geometry_reference import apply_affine, crop_matrix

GRID = ["grid_bbaf2n.mpg", "grid_lbbc2a.mpg", "grid_swiz3n.mpg"]


def collect(pipe, uri):
    run = pipe.run(uri)
    parts = list(run)
    if not parts:
        return run, None
    return run, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("name", GRID)
def test_one_track_per_grid_clip(retina_pipeline, name):
    run, rows = collect(retina_pipeline, str(asset(f"videos/{name}")))
    assert run.tracks == 1 and run.frames == 75
    assert set(rows["track_id"]) == {0}
    np.testing.assert_array_equal(np.sort(rows["frame_index"]), np.arange(75))
    assert rows["crop"].shape == (75, 96, 96) and rows["crop"].dtype == np.uint8
    assert rows["landmarks"].shape == (75, 5, 2)
    assert rows["crop"].std() > 10  # a real image, not a blank


def test_two_speakers_two_tracks(retina_pipeline, tmp_path):
    uri = str(asset("videos/grid_two_speakers_sbs.mp4"))
    rec = export_faces(retina_pipeline, uri, str(tmp_path / "out"))
    assert rec["status"] == "ok" and rec["tracks"] == 2 and rec["frames"] == 75
    tracks = pq.read_table(tmp_path / "out" / "tracks.parquet")
    assert tracks.schema.equals(TRACKS)
    clips = pq.read_table(tmp_path / "out" / "clips.parquet")
    assert clips.schema.equals(CLIPS) and clips.num_rows == 150
    t = tracks.to_pandas()
    assert sorted(t.track_id.unique()) == [0, 1]
    # The two tracks stay on their own side of the frame (ids do not swap).
    centre_x = t.box_xyxy.map(lambda b: (b[0] + b[2]) / 2)
    sides = t.assign(cx=centre_x).groupby("track_id").cx.agg(["min", "max"])
    assert sides["max"].min() < 360 < sides["min"].max()
    assert (t.groupby("track_id").size() == 75).all()
    assert (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.parametrize("name", ["noface_sky_360p.mp4", "noface_sky_1080p_hevc.mp4"])
def test_sky_clips_have_no_face(retina_pipeline, tmp_path, name):
    rec = export_faces(retina_pipeline, str(asset(f"videos/{name}")), str(tmp_path))
    assert (
        rec["status"] == "no_face" and rec["tracks"] == 0 and rec["frames"] == 50 + ("hevc" in name)
    )


def blazeface():
    from face_alignment.detection.blazeface.net_blazeface import BlazeFace

    net = BlazeFace()
    net.load_state_dict(torch.load(asset("detectors/blazeface.pth"), weights_only=True))
    net.load_anchors_from_npy(np.load(asset("detectors/anchors.npy")), "cpu")
    return net.eval()


def test_alignment_puts_eyes_on_the_template(retina_pipeline):
    """Independent check: BlazeFace (another network) finds the eyes of the aligned crops
    within 4 px of the template's eye centres."""
    import cv2

    net = blazeface()
    mf = np.load(MEAN_FACE)
    square = crop_square(mf, retina_pipeline.cfg.faces.align.crop_scale)
    to_crop = crop_matrix(np.hstack([np.eye(2), np.zeros((2, 1))]), square, 96)
    target = apply_affine(to_crop, np.stack([mf[36:42].mean(0), mf[42:48].mean(0)]))
    errors = []
    for name in GRID:
        _, rows = collect(retina_pipeline, str(asset(f"videos/{name}")))
        for crop in rows["crop"][::5]:
            img = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB), (128, 128))
            with torch.no_grad():
                p = net.predict_on_image(img)
            assert len(p) >= 1, "BlazeFace found no face in an aligned crop"
            eyes = p[0, 4:8].reshape(2, 2).numpy() * 96
            eyes = eyes[np.argsort(eyes[:, 0])]
            errors.append(np.linalg.norm(eyes - target, axis=1))
    errors = np.concatenate(errors)
    assert len(errors) >= 40
    # BlazeFace's own keypoints jitter by a pixel or two on 96 px crops: judge the typical
    # frame (median) strictly and the tail loosely.
    assert np.median(errors) < 3.0, f"median eye error {np.median(errors):.2f} px"
    assert np.quantile(errors, 0.95) < 4.0, f"95th pct {np.quantile(errors, 0.95):.2f} px"


def test_detect_every_k_frames_fills_in(tmp_path):
    cfg = load_config(None, face_overrides() + ["faces.detector.every_k=3", "video.end_s=2"])
    run, rows = collect(FacePipeline(cfg), str(asset("videos/grid_bbaf2n.mpg")))
    # Frames 0..48: the track ends at its last detection (48); frame 49 has none after it.
    assert run.tracks == 1 and len(rows["frame_index"]) == 49
    det = ~rows["interpolated"]
    np.testing.assert_array_equal(rows["frame_index"][det] % 3, 0)
    assert rows["interpolated"].sum() > 25 and (rows["det_score"][det] > 0.8).all()


def test_fan_plumbing_with_random_weights(tmp_path):
    """No real FAN weights exist here: a randomly initialised FAN checks shapes, batching and
    that tracks stay continuous through the fan68 code path."""
    from face_alignment.models import FAN

    torch.manual_seed(0)
    weights = tmp_path / "fan_random.pth"
    torch.save(FAN(4).state_dict(), weights)
    cfg = load_config(
        None,
        face_overrides("fan68")
        + [
            f"faces.landmarks.fan_weights={weights}",
            "faces.landmarks.batch_size=4",  # 2 faces x 3 frames: 1 full pass and 1 partial
            "faces.track.min_length=3",  # (a random FAN(4) costs ~1 s a face on this CPU)
            "video.end_s=0.12",
        ],
    )
    n = round(0.12 * 25)  # frames; at faces.track.min_length, so both tracks are kept
    pipe = FacePipeline(cfg)
    uri = str(asset("videos/grid_two_speakers_sbs.mp4"))
    run, rows = collect(pipe, uri)
    assert run.frames == n and run.tracks == 2
    assert rows["landmarks"].shape == (2 * n, 68, 2) and rows["crop"].shape == (2 * n, 96, 96)
    # Batched FAN (3 crops per pass) equals FAN face by face.
    from pipeline.video import VideoReader

    with VideoReader(uri) as r:
        frame = next(r.chunks(25)).frames[0]
    dets = pipe.detector(frame[None])[0]
    together = pipe.landmarker.batch([frame], [dets.boxes], [dets.landmarks])[0]
    alone = [
        pipe.landmarker.batch([frame], [dets.boxes[i : i + 1]], [dets.landmarks[i : i + 1]])[0][0]
        for i in range(len(dets.boxes))
    ]
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-3)


def test_offline_cache_seeded_from_assets(tmp_path, monkeypatch):
    """Default URLs + a cache seeded by copying files = works with no network."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(
        asset("detectors/retinaface_mobilenet0.25_Final.pth"),
        cache / "retinaface_mobilenet0.25.pth",
    )
    shutil.copy(MEAN_FACE, cache / "20words_mean_face.npy")
    monkeypatch.setenv("VAERR_CACHE", str(cache))
    out = tmp_path / "out"
    code = main(
        [
            "faces",
            str(asset("videos/grid_lbbc2a.mpg")),
            "-o",
            str(out),
            "--set",
            "faces.landmarks.kind=retina5",
            "--set",
            "video.end_s=1",
        ]
    )
    assert code == 0
    assert pq.read_table(out / "tracks.parquet").num_rows == 25


def test_missing_weights_without_network_is_one_clear_error(tmp_path, capsys):
    url = "http://127.0.0.1:9/weights/retina_missing.pth"  # nothing listens on port 9
    code = main(
        [
            "faces",
            str(asset("videos/grid_lbbc2a.mpg")),
            "-o",
            str(tmp_path / "o"),
            "--set",
            f"cache_dir={tmp_path / 'c'}",
            "--set",
            "faces.landmarks.kind=retina5",
            "--set",
            f"faces.detector.weights={url}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert url in err and str(tmp_path / "c" / "retina_missing.pth") in err


@pytest.mark.parametrize(
    "make,status,reason",
    [
        (lambda p: p.write_bytes(b""), "failed", "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "failed", "decodable"),
        (None, "failed", "not found"),
    ],
)
def test_cli_bad_inputs_print_a_status_line(tmp_path, capsys, make, status, reason):
    path = tmp_path / "in.mp4"
    if make:
        make(path)
    code = main(
        [
            "faces",
            str(path),
            "-o",
            str(tmp_path / "o"),
            "--set",
            f"faces.detector.weights={RETINA}",
            "--set",
            f"faces.align.mean_face={MEAN_FACE}",
            "--set",
            "faces.landmarks.kind=retina5",
        ]
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and last["status"] == status and reason in last["reason"]
    assert set(last) == {"video_id", "uri", "status", "reason", "tracks", "frames"}
    assert not (tmp_path / "o" / "tracks.parquet").exists()  # nothing half-written


def test_detector_bf16_matches_fp32_on_cpu():
    """Half precision (what GPUs run) keeps box edges within 3% of the face height and scores
    within 0.02 of fp32 (bf16 keeps 8 mantissa bits: ~0.4% per operation)."""
    from pipeline.faces.detect import RetinaFaceDetector
    from pipeline.video import VideoReader

    cfg = load_config(None, face_overrides())
    with VideoReader(str(asset("videos/grid_two_speakers_sbs.mp4"))) as r:
        frames = next(r.chunks(25, chunk_frames=4)).frames
    full = RetinaFaceDetector(cfg.faces.detector)
    half = RetinaFaceDetector(cfg.faces.detector, net=full.net, dtype="bfloat16")
    for a, b in zip(full(frames), half(frames)):
        assert len(a.boxes) == len(b.boxes) == 2
        order = np.argsort(b.boxes[:, 0])[np.argsort(np.argsort(a.boxes[:, 0]))]
        height = (a.boxes[:, 3] - a.boxes[:, 1])[:, None]
        assert (np.abs(a.boxes - b.boxes[order]) / height).max() < 0.03
        np.testing.assert_allclose(a.scores, b.scores[order], atol=0.02)


def test_prepared_detector_matches_the_plain_network():
    """The shipped detector folds BN into the convs and runs channels-last (speed): on real
    frames it finds the same faces as face-alignment's plain network, boxes and points within
    0.05 px, scores within 1e-4."""
    from face_alignment.detection.retinaface.net_retinaface import RetinaFace, cfg_mnet

    from pipeline.faces.detect import RetinaFaceDetector, load_weights
    from pipeline.video import VideoReader

    cfg = load_config(None, face_overrides())
    with VideoReader(str(asset("videos/grid_two_speakers_sbs.mp4"))) as r:
        frames = next(r.chunks(25, chunk_frames=4)).frames
    fast = RetinaFaceDetector(cfg.faces.detector)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.net.modules())
    plain_net = load_weights(RetinaFace(cfg=cfg_mnet), str(RETINA), "cpu")
    plain = RetinaFaceDetector(cfg.faces.detector, net=plain_net)
    for a, b in zip(fast(frames), plain(frames)):
        assert len(a.boxes) == len(b.boxes) == 2
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_batch_sizes_follow_the_device_unless_configured():
    """None means the device's default: small batches on a CPU (cache-resident), large on a
    GPU; a configured size always wins."""
    from pipeline.device import batch_for
    from pipeline.faces.landmarks import Fan68

    assert batch_for("cpu", None, cpu=8, gpu=256) == 8
    assert batch_for("cuda:0", None, cpu=8, gpu=256) == 256
    assert batch_for("cuda", 5, cpu=8, gpu=256) == 5
    cfg = load_config(None, face_overrides())
    fan = Fan68(cfg.faces.landmarks, net=torch.nn.Identity())
    assert fan.batch_size == 4
    assert Fan68(cfg.faces.landmarks, "cuda", net=torch.nn.Identity()).batch_size == 256
    # runtime sizes: the same config_hash whatever they are (and the pinned one at defaults)
    sizes = ["video.chunk_frames=7", "video.chunk_mb=64", "faces.detector.batch_size=3",
             "faces.landmarks.batch_size=5"]  # fmt: skip
    resized = load_config(None, face_overrides() + sizes)
    assert resized.video.chunk_frames == 7 and config_hash(resized) == config_hash(cfg)
    assert config_hash(load_config(None, face_overrides() + ["faces.detector.nms=0.5"])) != (
        config_hash(cfg)
    )


def test_kernel_tuning_is_scoped_to_the_detector_call():
    """cudnn.benchmark is on only inside tuned_kernels on a GPU device and comes back after it
    (the model stage's windows of any length must not be tuned at each shape); on a CPU it is
    never touched."""
    from pipeline.device import tuned_kernels

    before = torch.backends.cudnn.benchmark
    with tuned_kernels("cpu"):
        assert torch.backends.cudnn.benchmark == before
    torch.backends.cudnn.benchmark = False
    try:
        with tuned_kernels("cuda:0"):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_fan_gets_contiguous_nchw_input():
    """FAN must see plain NCHW memory: a channels-last view (what transposing stacked HWC
    crops gives) runs its hourglasses about 2x slower on a CPU."""
    from pipeline.faces.landmarks import Fan68

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((x.shape, x.is_contiguous()))
            return torch.zeros(x.shape[0], 68, 64, 64)

    cfg = load_config(None, face_overrides())
    fan = Fan68(cfg.faces.landmarks, net=Probe())
    frame = np.zeros((120, 160, 3), np.uint8)
    fan.batch([frame], [np.array([[40, 30, 100, 100]], np.float32)], [np.zeros((1, 5, 2))])
    assert seen == [(torch.Size([1, 3, 256, 256]), True)]
