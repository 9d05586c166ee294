"""The face stage's device path (issue 15) against today's host path, on CPU tensors here and on
CUDA in the tests marked `gpu`: colour conversion vs PyAV, batched detector vs the per-frame
detector, batched warps vs cv2, FAN crops and heatmap peaks, and decoding ahead in a thread."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace
from torchvision.ops import nms

from pipeline.encode import write_video
from pipeline.faces.align import crop_square, template_points
from pipeline.faces.colour import planes_to_device, rgb_to_gray
from pipeline.faces.decode import decode_boxes, decode_landmarks
from pipeline.faces.detect import (
    BGR_MEAN,
    RetinaFaceDetector,
    area_resize,
    autocast,
    prior_boxes,
)
from pipeline.faces.feed import decode_ahead
from pipeline.faces.landmarks import fan_crops, fan_windows, heatmap_points, heatmap_points_torch
from pipeline.faces.warp import compose, similarity_batch, warp_batch
from pipeline.video import VideoReader
from schemas.config import load_config
from tests.conftest import DEVICES, MEAN_FACE, asset, face_overrides
from tests.geometry_reference import crop_matrix, similarity_transform, warp_crop

REAL_CLIPS = [
    "grid_bbaf2n.mpg",
    "grid_lbbc2a.mpg",
    "grid_swiz3n.mpg",
    "grid_two_speakers_sbs.mp4",
    "noface_sky_360p.mp4",
]


# ---------------------------------------------------------------------------------------------
# 1. Planes converted on the device


def colour_clip(path: Path, cs: Colorspace, rng: ColorRange, n: int = 4) -> None:
    """H.264 yuv420p clip tagged with the colour matrix `cs` and range `rng`: gradients in all
    three channels and a saturated block (chroma edges), encoded near-losslessly."""
    h, w = 72, 128
    c = av.open(str(path), "w")
    st = c.add_stream("libx264", rate=25)
    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
    st.codec_context.colorspace = cs
    st.codec_context.color_range = rng
    st.options = {"crf": "12"}
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([xx * 2 + i * 5, yy * 3, (xx + yy) * 1.2], -1).clip(0, 255).astype(np.uint8)
        img[20:40, 30:60] = (230, 20, 60)
        f = av.VideoFrame.from_ndarray(img, "rgb24")
        f = f.reformat(format="yuv420p", dst_colorspace=cs, dst_color_range=rng)
        f.colorspace, f.color_range = cs, rng
        for p in st.encode(f):
            c.mux(p)
    for p in st.encode():
        c.mux(p)
    c.close()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cs", [Colorspace.ITU601, Colorspace.ITU709], ids=["bt601", "bt709"])
@pytest.mark.parametrize("rng", [ColorRange.MPEG, ColorRange.JPEG], ids=["limited", "full"])
def test_planes_convert_like_pyav(tmp_path, device, cs, rng):
    path = tmp_path / "c.mp4"
    colour_clip(path, cs, rng)
    with VideoReader(str(path)) as r:
        chunk = next(r.chunks(25, planes=True))
    pl = chunk.planes
    assert chunk.frames is None and pl.rgb is None and pl.y.dtype == np.uint8
    assert pl.matrix == ("bt709" if cs == Colorspace.ITU709 else "bt601")
    assert pl.full_range == (rng == ColorRange.JPEG)
    rgb, gray = planes_to_device(pl, device)
    assert rgb.device.type == gray.device.type == torch.device(device).type
    ref_rgb, ref_gray = [], []
    kw = dict(src_colorspace=cs, dst_colorspace=cs, src_color_range=rng)
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            ref_rgb.append(f.reformat(format="rgb24", dst_color_range=ColorRange.JPEG, **kw))
            ref_gray.append(f.reformat(format="gray", dst_color_range=ColorRange.JPEG, **kw))
    n = len(rgb)
    want_rgb = np.stack([f.to_ndarray() for f in ref_rgb[:n]]).astype(int)
    want_gray = np.stack([f.to_ndarray() for f in ref_gray[:n]]).astype(int)
    d_rgb = np.abs(rgb.cpu().numpy().astype(int) - want_rgb)
    d_gray = np.abs(gray.cpu().numpy().astype(int) - want_gray)
    assert d_rgb.max() <= 2, (d_rgb.max(), d_rgb.mean())
    assert d_gray.max() <= 2, (d_gray.max(), d_gray.mean())
    # every_k: only the selected frames are converted to RGB, gray comes for all
    sel = np.array([0, 2])
    rgb_sel, gray_all = planes_to_device(pl, device, select=sel)
    assert torch.equal(rgb_sel.cpu(), rgb.cpu()[sel]) and torch.equal(gray_all.cpu(), gray.cpu())


def test_rotation_and_fallback_formats(tmp_path):
    """Rotation is applied after conversion; a format without a YUV matrix (lossless RGB
    H.264) carries PyAV's RGB and matches the rgb24 path exactly."""
    img = np.zeros((32, 48, 3), np.uint8)
    img[:8, :8] = 255
    img[20:, 30:] = (200, 40, 90)
    path = tmp_path / "rot.mp4"
    write_video(path, [img] * 5, 25, lossless=True, rotation=90)
    with VideoReader(str(path)) as r:
        want = next(r.chunks(25)).frames
    with VideoReader(str(path)) as r:
        chunk = next(r.chunks(25, planes=True))
    rgb, gray = planes_to_device(chunk.planes, "cpu")
    assert rgb.shape == want.shape == (5, 48, 32, 3)
    assert np.abs(rgb.numpy().astype(int) - want).max() <= 2
    want_gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in want]).astype(int)
    assert np.abs(gray.numpy().astype(int) - want_gray).max() <= 2

    rgb_path = tmp_path / "rgb.mkv"
    with av.open(str(rgb_path), "w") as c:
        st = c.add_stream("libx264rgb", rate=25)
        st.width, st.height, st.pix_fmt = 48, 32, "rgb24"
        st.options = {"qp": "0"}
        for _ in range(3):
            for p in st.encode(av.VideoFrame.from_ndarray(img, "rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    with VideoReader(str(rgb_path)) as r:
        chunk = next(r.chunks(25, planes=True))
    assert chunk.planes.rgb is not None and chunk.planes.y is None
    rgb, gray = planes_to_device(chunk.planes, "cpu")
    np.testing.assert_array_equal(rgb.numpy()[0], img)
    np.testing.assert_array_equal(gray.numpy()[0], cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))


# ---------------------------------------------------------------------------------------------
# 2. The batched detector against today's per-frame path


def per_frame_reference(det: RetinaFaceDetector, frames: np.ndarray) -> list[tuple]:
    """Commit 3f0e983's detector: numpy preparation (cv2 INTER_AREA resize, BGR, mean) on the
    host, then per frame: threshold, decode, nms, min size, max faces."""
    cfg = det.cfg
    n, h, w = frames.shape[:3]
    scale = min(1.0, cfg.max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    x = frames[..., ::-1].astype(np.float32) - BGR_MEAN
    x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    hh, ww = x.shape[2:]
    with torch.inference_mode(), autocast(det.device, det.dtype):
        loc, conf, landm = det.net(x.to(det.device))
    loc, conf, landm = loc.float().cpu(), conf.float().cpu(), landm.float().cpu()
    priors = torch.from_numpy(prior_boxes(hh, ww))
    size = torch.tensor([ww, hh], dtype=torch.float32) / scale
    out = []
    for i in range(len(frames)):
        scores = conf[i, :, 1]
        keep = scores > cfg.threshold
        boxes = decode_boxes(loc[i][keep], priors[keep]) * size.repeat(2)
        pts = decode_landmarks(landm[i][keep], priors[keep]) * size
        sc = scores[keep]
        order = nms(boxes, sc, cfg.nms)
        boxes, pts, sc = boxes[order], pts[order], sc[order]
        side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        big = side >= cfg.min_size_px
        m = cfg.max_faces
        out.append((boxes[big][:m].numpy(), sc[big][:m].numpy(), pts[big][:m].numpy()))
    return out


@pytest.fixture(scope="module")
def clip_frames():
    """The first 12 analysis frames (RGB, today's decode) of each real clip."""
    out = {}
    for name in REAL_CLIPS:
        with VideoReader(str(asset(f"videos/{name}"))) as r:
            out[name] = next(r.chunks(25, chunk_frames=12)).frames
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_batched_detector_matches_per_frame(clip_frames, device):
    cfg = load_config(None, face_overrides())
    det = RetinaFaceDetector(cfg.faces.detector, device)
    faces = 0
    for name, frames in clip_frames.items():
        ref = per_frame_reference(det, frames)
        # numpy in, and the same frames as a tensor already on the device
        for got_all in (det(frames), det(torch.from_numpy(frames).to(device))):
            for got, (boxes, scores, pts) in zip(got_all, ref):
                assert len(got.boxes) == len(boxes), name
                np.testing.assert_allclose(got.boxes, boxes, atol=0.5)
                np.testing.assert_allclose(got.landmarks, pts, atol=0.5)
                np.testing.assert_allclose(got.scores, scores, atol=1e-3)
        faces += sum(len(b) for b, _, _ in ref)
    assert faces == 12 * 5  # one face in each grid clip, two side by side, none in the sky


def test_batched_detector_downscales_like_cv2():
    """Frames over max_side are area-downscaled on the device (2x here) like cv2 INTER_AREA."""
    cfg = load_config(None, face_overrides() + ["faces.detector.max_side=360"])
    det = RetinaFaceDetector(cfg.faces.detector, "cpu")
    with VideoReader(str(asset("videos/grid_two_speakers_sbs.mp4"))) as r:
        frames = next(r.chunks(25, chunk_frames=4)).frames  # 720x288 -> 360x144
    ref = per_frame_reference(det, frames)
    for got, (boxes, _, pts) in zip(det(frames), ref):
        assert len(got.boxes) == len(boxes) == 2
        np.testing.assert_allclose(got.boxes, boxes, atol=0.5)
        np.testing.assert_allclose(got.landmarks, pts, atol=0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(288, 720, 256, 640), (360, 640, 180, 320), (100, 90, 37, 33)])
def test_area_resize_matches_cv2(device, shape):
    """The tensor INTER_AREA (used on GPUs; CPUs call cv2) against cv2, integer and
    fractional factors: within 1 level after rounding."""
    h, w, hs, ws = shape
    img = np.random.default_rng(3).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    img[:, h // 3 :, : w // 2] = 200  # edges
    ref = np.stack([cv2.resize(f, (ws, hs), interpolation=cv2.INTER_AREA) for f in img])
    x = torch.from_numpy(img).to(device).permute(0, 3, 1, 2).float()
    got = area_resize(x, hs, ws).round().permute(0, 2, 3, 1).cpu().numpy()
    assert np.abs(got - ref).max() <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_rgb_to_gray_kernels_equal_cv2(clip_frames, device):
    frames = clip_frames["grid_two_speakers_sbs.mp4"][:3]
    ref = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    got = rgb_to_gray(torch.from_numpy(frames).to(device), kernel="tensor")
    assert np.abs(got.cpu().numpy().astype(int) - ref).max() <= 1  # cv2's SIMD rounding
    np.testing.assert_array_equal(rgb_to_gray(torch.from_numpy(frames)).numpy(), ref)


# ---------------------------------------------------------------------------------------------
# 3. Alignment crops on the device against cv2


def random_fits(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    """n noisy retina5-like point sets [n, 5, 2] inside a w x h frame (some near the edge)."""
    mean = np.load(asset("landmarks/20words_mean_face.npy"))
    tpl = template_points(mean, "retina5", ())
    out = []
    for _ in range(n):
        ang, s = rng.uniform(-0.4, 0.4), rng.uniform(0.25, 0.6)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * s
        centre = rng.uniform([0, 0], [w, h])
        pts = (tpl - tpl.mean(0)) @ rot.T + centre + rng.normal(0, 1.0, tpl.shape)
        out.append(pts)
    return np.stack(out)


KERNELS = [("cpu", "tensor"), ("cpu", "cv2")] + [
    pytest.param(
        "cuda",
        "tensor",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    )
]


@pytest.mark.parametrize("device,kernel", KERNELS)
def test_device_crops_match_cv2(clip_frames, device, kernel):
    mean = np.load(asset("landmarks/20words_mean_face.npy"))
    tpl = template_points(mean, "retina5", ())
    square = crop_square(mean, 1.3)
    frames = clip_frames["grid_two_speakers_sbs.mp4"][:6]
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    rng = np.random.default_rng(0)
    pts = random_fits(rng, 40, gray.shape[2], gray.shape[1])
    owner = rng.integers(0, len(gray), len(pts))
    ref_m = np.stack([crop_matrix(similarity_transform(p, tpl), square, 96) for p in pts])
    ref = np.stack([warp_crop(gray[o], m, 96) for o, m in zip(owner, ref_m)])
    x0, y0, side = square
    k = 96 / side
    to_crop = torch.tensor([[k, 0, -x0 * k], [0, k, -y0 * k]], dtype=torch.float64)
    fit = similarity_batch(torch.from_numpy(pts).to(device), torch.from_numpy(tpl))
    m = compose(to_crop.to(device), fit)
    np.testing.assert_allclose(m.cpu().numpy(), ref_m, atol=1e-6)
    images, own = torch.from_numpy(gray).to(device), torch.from_numpy(owner).to(device)
    crops = warp_batch(images, own, m, 96, kernel=kernel)
    assert crops.dtype == torch.uint8 and crops.shape == (40, 96, 96)
    mad = np.abs(crops.cpu().numpy().astype(float) - ref).mean((1, 2))
    assert mad.max() < 1.0, mad.max()


# ---------------------------------------------------------------------------------------------
# 4. FAN: batched crops and heatmap peaks


@pytest.mark.parametrize("device,kernel", KERNELS)
def test_fan_crops_match_cv2(clip_frames, device, kernel, monkeypatch):
    frames = clip_frames["grid_two_speakers_sbs.mp4"][:4]
    rng = np.random.default_rng(1)
    boxes = [
        np.array([[rng.uniform(-40, 600), rng.uniform(-40, 200), 0, 0]]) for _ in range(len(frames))
    ]
    for b in boxes:  # some windows reach past the frame: zeros there, as in cv2
        b[:, 2:] = b[:, :2] + rng.uniform(60, 160)
    allb = np.concatenate(boxes)
    centre, side = fan_windows(allb)
    ref = []
    for f, c, s in zip(frames, centre, side):
        k = 256 / s
        mat = np.array([[k, 0, 128 - c[0] * k], [0, k, 128 - c[1] * k]])
        ref.append(cv2.warpAffine(f, mat, (256, 256)))
    owner = torch.arange(len(frames), device=device)
    import pipeline.faces.landmarks as lm_mod

    monkeypatch.setattr(
        lm_mod, "warp_batch", lambda *a, **k: warp_batch(*a, **{**k, "kernel": kernel})
    )
    got = fan_crops(
        torch.from_numpy(frames).to(device),
        owner,
        torch.from_numpy(centre).to(device),
        torch.from_numpy(side).to(device),
    )
    mad = np.abs(got.cpu().numpy().astype(float) - np.stack(ref)).mean((1, 2, 3))
    assert mad.max() < 1.0, mad


@pytest.mark.parametrize("device", DEVICES)
def test_heatmap_peaks_match_numpy(device):
    """Gaussian heatmaps with known sub-pixel peaks (some on the border): the device rule
    gives today's points within 0.1 px, and both land within 0.5 px of the true peak."""
    rng = np.random.default_rng(2)
    m, k = 6, 68
    peaks = rng.uniform(-0.4, 63.4, (m, k, 2))
    peaks[0, :4] = [[0.2, 10.0], [63.2, 30.0], [20.0, 0.1], [40.0, 63.3]]
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    hm = np.exp(
        -((xx - peaks[..., 0, None, None]) ** 2 + (yy - peaks[..., 1, None, None]) ** 2) / 4.0
    ).astype(np.float32)
    ref = heatmap_points(hm)
    got = heatmap_points_torch(torch.from_numpy(hm).to(device)).cpu().numpy()
    np.testing.assert_allclose(got, ref, atol=0.1)
    inner = (peaks > 1) & (peaks < 62)
    assert np.abs(got - peaks)[inner].max() <= 0.5


# ---------------------------------------------------------------------------------------------
# 5. Decoding ahead


def test_decode_ahead_keeps_order_errors_and_stops():
    assert list(decode_ahead(iter(range(20)), depth=2)) == list(range(20))

    def broken():
        yield 1
        raise ValueError("corrupt")

    got = []
    with pytest.raises(ValueError, match="corrupt"):
        for x in decode_ahead(broken()):
            got.append(x)
    assert got == [1]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    gen = decode_ahead(endless(), depth=2)
    assert next(gen) == 0
    gen.close()  # the consumer stops early: the thread stops, bounded read-ahead
    assert threading.active_count() == before and len(produced) <= 5


def test_face_stage_from_planes_matches_rgb_frames(retina_pipeline):
    """End to end on real clips: the stream fed the decoder's planes (the GPU path, converted
    here on CPU tensors) against the stream fed PyAV's RGB (today's input; the CPU path), same
    models: same tracks and rows, landmarks within 0.1 px on average, crops within 2 levels
    (PyAV's gray is the true luma, 1-1.5 levels above the gray of its truncated RGB)."""
    from pipeline.faces.stream import FaceStream

    p = retina_pipeline

    def rows(uri: str, planes: bool) -> dict[str, np.ndarray]:
        stream = FaceStream(p.cfg.faces, 25, p.detector, p.landmarker, p.mean_face)
        out = []
        with VideoReader(uri) as r:
            for c in r.chunks(25, chunk_frames=32, planes=planes):
                assert (c.planes is not None) == planes
                out.append(stream.push(c))
        out.append(stream.finish())
        return {k: np.concatenate([b[k] for b in out]) for k in out[0]}

    for name in ("grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4"):
        uri = str(asset(f"videos/{name}"))
        a, b = rows(uri, True), rows(uri, False)
        np.testing.assert_array_equal(a["track_id"], b["track_id"])
        np.testing.assert_array_equal(a["frame_index"], b["frame_index"])
        assert len(a["crop"]) in (75, 150)
        assert np.abs(a["landmarks"] - b["landmarks"]).mean() < 0.1
        mad = np.abs(a["crop"].astype(float) - b["crop"]).mean((1, 2))
        assert np.median(mad) < 2.0, np.median(mad)
    assert str(MEAN_FACE)


# ---------------------------------------------------------------------------------------------
# 5. FAN as it runs on a GPU (issue 24): channels-last, the network in half precision,
#    torch.compile with a logged fallback; each path on CPU tensors here


def fan_setup(**kwargs):
    """A random one-hourglass FAN (no FAN weights here) behind Fan68, and one frame with two
    boxes; kwargs go to Fan68 (channels_last, half, dtype, backend)."""
    from face_alignment.models import FAN

    from pipeline.faces.landmarks import Fan68

    torch.manual_seed(0)
    overrides = face_overrides("fan68") + [f"faces.landmarks.compile={'backend' in kwargs}"]
    cfg = load_config(None, overrides)
    fan = Fan68(cfg.faces.landmarks, net=FAN(1).eval(), **kwargs)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    boxes = [np.array([[40, 30, 140, 150], [180, 40, 290, 170]], np.float32)]
    return fan, frame, boxes


def fan_points(fan, frame, boxes) -> np.ndarray:
    return fan.batch([frame], boxes, [np.zeros((2, 5, 2), np.float32)])[0]


def test_fan_defaults_follow_the_device():
    """On a CPU: plain NCHW float32 (autocast for another dtype, as before); on an
    accelerator: channels-last, and the weights in half precision where dtype asks."""
    from pipeline.faces.landmarks import Fan68

    cfg = load_config(None, face_overrides("fan68"))
    net = torch.nn.Conv2d(3, 68, 1)
    cpu = Fan68(cfg.faces.landmarks, "cpu", net=net, dtype="float16")
    assert (cpu.channels_last, cpu.half, cpu.compiled) == (False, False, None)
    assert net.weight.dtype == torch.float32
    gpu = Fan68.__new__(Fan68)  # the choices alone, without moving a net to a GPU
    Fan68.__init__(gpu, cfg.faces.landmarks, "cpu", net=torch.nn.Conv2d(3, 68, 1),
                   dtype="float16", channels_last=True, half=True)  # fmt: skip
    assert gpu.net.weight.dtype == torch.float16
    assert gpu.net.weight.is_contiguous(memory_format=torch.channels_last)


def test_fan_channels_last_and_half_give_its_points():
    """The same FAN, NCHW float32 against channels-last (equal points) and against the
    network in bfloat16 (heatmaps that agree: correlation over 0.99); the input reaches the
    network in the layout and dtype chosen."""
    fan, frame, boxes = fan_setup()
    base = fan_points(fan, frame, boxes)
    seen = []
    nhwc, _, _ = fan_setup(channels_last=True)
    hook = nhwc.net.register_forward_pre_hook(lambda m, a: seen.append(
        (a[0].dtype, a[0].is_contiguous(memory_format=torch.channels_last))))  # fmt: skip
    np.testing.assert_allclose(fan_points(nhwc, frame, boxes), base, atol=1e-3)
    hook.remove()
    assert seen == [(torch.float32, True)] * len(seen) and seen

    half, _, _ = fan_setup(channels_last=True, half=True, dtype="bfloat16")
    assert next(half.net.parameters()).dtype == torch.bfloat16
    crops, _, _ = fan._crops(frame[None], boxes)
    x = crops.permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        a = fan.net(x)[-1].flatten()
        b = half.net(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))[-1]
    r = np.corrcoef(a.numpy(), b.float().flatten().numpy())[0, 1]
    assert r > 0.99, r
    assert fan_points(half, frame, boxes).shape == (2, 68, 2)


def test_fan_compiled_gives_its_points_and_falls_back_when_compiling_fails(caplog):
    """`faces.landmarks.compile`: the compiled network (the eager backend here: the same
    wrapper without a C++ toolchain's minutes) gives the same points; a backend that fails
    leaves FAN uncompiled from then on, with the reason logged, and the same points."""
    fan, frame, boxes = fan_setup()
    base = fan_points(fan, frame, boxes)
    compiled, _, _ = fan_setup(backend="eager")
    assert compiled.compiled is not None
    np.testing.assert_allclose(fan_points(compiled, frame, boxes), base, atol=1e-4)
    assert compiled.compiled is not None  # still compiled: it worked

    def broken(gm, inputs):
        raise RuntimeError("no compiler here")

    failing, _, _ = fan_setup(backend=broken)
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(fan_points(failing, frame, boxes), base, atol=1e-4)
    assert failing.compiled is None
    assert "torch.compile failed" in caplog.text and "no compiler here" in caplog.text


def test_how_fan_runs_is_not_in_the_config_hash():
    from schemas.config import config_hash

    plain = load_config(None, face_overrides("fan68"))
    compiled = load_config(None, face_overrides("fan68") + ["faces.landmarks.compile=true"])
    assert config_hash(plain) == config_hash(compiled)
