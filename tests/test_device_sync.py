"""A device path that never waits (issue 24): the detector's decoding in fixed shapes (each
frame's strongest candidates, a dense greedy NMS), with no operation that would make a GPU
wait for the host inside a batch, and the same faces as the exact path with host round trips.
Everything runs on CPU tensors here (a counter of the operations that would synchronise on a
GPU) and on CUDA in the test marked `gpu` (torch's own sync detector, set to raise)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.ops import nms

from pipeline.faces import decode
from pipeline.faces.decode import (
    NetOutputs,
    decode_batch,
    decode_device,
    decode_exact,
    greedy_nms_dense,
)
from pipeline.faces.detect import RetinaFaceDetector, device_priors, device_size
from pipeline.video import VideoReader
from schemas.config import load_config
from tests.conftest import DEVICES, asset, face_overrides

CLIPS = ["grid_bbaf2n.mpg", "grid_two_speakers_sbs.mp4", "noface_sky_360p.mp4"]

# Operations whose result size or value the host must know, so that on a GPU they wait for
# the device: nonzero (and what calls it), scalar reads, boolean masks as indices, NMS.
SYNCING = {
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::_local_scalar_dense",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "torchvision::nms",
}


class SyncCounter(TorchDispatchMode):
    """Counts, by name, the operations dispatched inside it that would synchronise a GPU with
    the host: SYNCING, indexing by a boolean mask, and copies from a device to the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNCING:
            self.seen[name] += 1
        elif name in ("aten::index.Tensor", "aten::index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self.seen["boolean index"] += 1
        elif name in ("aten::_to_copy", "aten::copy_"):
            src = args[1] if name == "aten::copy_" else args[0]
            dst = (kwargs or {}).get("device") if name == "aten::_to_copy" else args[0].device
            if src.device.type != "cpu" and dst is not None and torch.device(dst).type == "cpu":
                self.seen["device to host copy"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def outputs():
    """The real RetinaFace's outputs for 16 frames of each clip, with their priors and size:
    {clip: (loc, conf, landm, priors, size)} on the CPU."""
    cfg = load_config(None, face_overrides())
    det = RetinaFaceDetector(cfg.faces.detector)
    out = {}
    for name in CLIPS:
        with VideoReader(str(asset(f"videos/{name}"))) as r:
            frames = next(r.chunks(25, chunk_frames=16)).frames
        x, scale = det._prepare(frames)
        with torch.inference_mode():
            loc, conf, landm = (t.float() for t in det.net(x))
        h, w = x.shape[2:]
        geometry = device_priors(h, w, "cpu"), device_size(w, h, scale, "cpu")
        out[name] = NetOutputs(loc, conf, landm, *geometry)
    return cfg, out


def same_faces(a, b) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(p, q) for p, q in zip(x, y)) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_shape_decoding_gives_exactly_the_exact_paths_faces(outputs, device):
    """On the real clips (one face, two faces, none): bit-equal boxes, scores and points, and
    every frame decoded on the fast path (its exact flag set)."""
    cfg, outs = outputs
    faces = 0
    for name, tensors in outs.items():
        t = NetOutputs(*(x.to(device) for x in tensors))
        packed = decode_device(t, cfg.faces.detector)
        assert bool((packed[:, -1] == 1).all()), name  # no batch fell back
        fast, exact = decode_batch(t, cfg.faces.detector), decode_exact(t, cfg.faces.detector)
        assert same_faces(fast, exact), name
        faces += sum(len(d.boxes) for d in fast)
    assert faces == 16 * (1 + 2)


def test_crowded_frames_take_the_exact_path(outputs, monkeypatch):
    """A frame with more candidates over the threshold than the device keeps (a crowd; here
    the cap lowered to 8 against ~30 a face) is flagged, and its batch decoded exactly."""
    cfg, outs = outputs
    monkeypatch.setattr(decode, "DEVICE_TOP_K", 8)
    monkeypatch.setattr(decode, "fits_on_host", lambda device: False)  # a GPU's fixed K
    t = outs["grid_two_speakers_sbs.mp4"]
    assert bool((decode_device(t, cfg.faces.detector)[:, -1] == 0).all())
    got = decode_batch(t, cfg.faces.detector)
    assert same_faces(got, decode_exact(t, cfg.faces.detector))
    assert [len(d.boxes) for d in got] == [2] * 16


def test_equal_scores_are_ordered_as_the_exact_path_orders_them(outputs):
    """RetinaFace gives neighbouring anchors equal scores (a pin run met one: the same score,
    boxes 1.8 px apart); which of them survives NMS must not depend on K. Here every candidate
    of a frame is tied: the fast path at any K keeps what the exact path keeps."""
    cfg, outs = outputs
    t = outs["grid_bbaf2n.mpg"]
    conf = t.conf.clone()
    over = conf[..., 1] > cfg.faces.detector.threshold
    conf[..., 1] = torch.where(over, torch.tensor(0.95), conf[..., 1])
    tied = t._replace(conf=conf)
    exact = decode_exact(tied, cfg.faces.detector)
    assert [len(d.boxes) for d in exact] == [1] * 16
    for cap in (32, 48, 256):
        packed = decode_device(tied, cfg.faces.detector, cap).numpy()
        assert (packed[:, -1] == 1).all()
        np.testing.assert_array_equal(packed[:, :4], np.stack([d.boxes[0] for d in exact]))
    assert same_faces(decode_batch(tied, cfg.faces.detector), exact)


def chain(n: int, step: float) -> torch.Tensor:
    """n boxes 10 px wide sliding by `step` px, scores falling: each overlaps the next by
    IoU (10 - step) / (10 + step); greedy NMS keeps every other one, and each decision waits
    for the one before (the longest suppression chain there is)."""
    x = torch.arange(n, dtype=torch.float32) * step
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)


def test_dense_nms_is_greedy_nms_and_says_when_it_has_not_converged():
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(6, 40, 2, generator=gen) * 60  # crowded: many overlaps a frame
    sides = 8 + torch.rand(6, 40, 1, generator=gen) * 20
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], -1)
    scores = torch.rand(6, 40, generator=gen)
    order = scores.argsort(1, descending=True)
    boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    scores = scores.gather(1, order)
    valid = scores > 0.2
    keep, converged = greedy_nms_dense(boxes, valid, 0.4, rounds=40)
    assert bool(converged.all())
    for i in range(6):
        ref = torch.zeros(40, dtype=torch.bool)
        sel = valid[i].nonzero().flatten()
        ref[sel[nms(boxes[i][sel], scores[i][sel], 0.4)]] = True
        assert torch.equal(keep[i], ref), i
    # a chain of 9 needs more rounds than 2: flagged, not wrong
    c = chain(9, 3.0)[None]
    short, ok = greedy_nms_dense(c, torch.ones(1, 9, dtype=torch.bool), 0.4, rounds=2)
    full, ok_full = greedy_nms_dense(c, torch.ones(1, 9, dtype=torch.bool), 0.4, rounds=9)
    assert not bool(ok) and bool(ok_full)
    assert full[0].tolist() == [True, False] * 4 + [True]
    assert not torch.equal(short, full)


def test_on_a_cpu_k_fits_the_batch(outputs):
    """On a CPU (reads are free) K is the batch's largest candidate count rounded up to 16:
    the dense NMS costs K squared, so two faces' ~60 candidates take 64, not 256."""
    cfg, outs = outputs
    t = outs["grid_two_speakers_sbs.mp4"]
    most = int((t.conf[..., 1] > cfg.faces.detector.threshold).sum(1).max())
    assert decode.candidate_cap(t, cfg.faces.detector) == -(-most // 16) * 16 < 256
    assert decode.candidate_cap(outs["noface_sky_360p.mp4"], cfg.faces.detector) == 16


@pytest.mark.parametrize("frames", [2, 8])
def test_a_detector_batch_never_waits_for_the_host(outputs, frames, monkeypatch):
    """The fast path's device part, under the counter: nothing that would synchronise, at any
    batch size; the whole batch (network, decoding, the one packed copy) as a GPU runs it
    (a fixed K) neither. The exact path, under the same counter, is seen to wait (so the
    counter counts)."""
    cfg, outs = outputs
    loc, conf, landm, priors, size = outs["grid_two_speakers_sbs.mp4"]
    part = NetOutputs(loc[:frames], conf[:frames], landm[:frames], priors, size)
    with SyncCounter() as fast:
        decode_device(part, cfg.faces.detector)
    assert not fast.seen, fast.seen
    with SyncCounter() as exact:
        decode_exact(part, cfg.faces.detector)
    assert exact.seen["aten::nonzero"] >= 1 and exact.seen["boolean index"] >= 1

    monkeypatch.setattr(decode, "fits_on_host", lambda device: False)  # a GPU's policy
    det = RetinaFaceDetector(cfg.faces.detector)
    with VideoReader(str(asset("videos/grid_two_speakers_sbs.mp4"))) as r:
        video = next(r.chunks(25, chunk_frames=frames)).frames
    with SyncCounter() as whole, torch.inference_mode():
        x, scale = det._prepare(video)
        det._run(x, scale)
    assert not whole.seen, whole.seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_detector_batch_syncs_only_for_its_one_copy(outputs):
    """On a GPU, torch's sync detector raises on any synchronising call inside the device
    part of the decoding."""
    cfg, outs = outputs
    t = NetOutputs(*(x.cuda() for x in outs["grid_two_speakers_sbs.mp4"]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        packed = decode_device(t, cfg.faces.detector)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert packed.is_cuda and packed.shape[0] == 16


@pytest.mark.parametrize("device", DEVICES)
def test_copies_between_host_and_device_start_without_waiting(device):
    """`to_device` (host -> device; pinned memory to a GPU) and `HostCopy` (device -> host,
    read later) move the same values; on a CPU neither copies at all."""
    from pipeline.device import HostCopy, to_device

    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    on = to_device(t, device)
    assert on.device.type == torch.device(device).type
    if on.device.type == "cpu":
        assert on.data_ptr() == t.data_ptr()
    back = HostCopy(on * 2)
    assert (back.event is None) == (on.device.type == "cpu")
    if back.event is not None:
        assert back.host.is_pinned()
    np.testing.assert_array_equal(back.numpy(), t.numpy() * 2)
