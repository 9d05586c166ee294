"""RetinaFace MobileNet-0.25 (the network face-alignment ships), batched over frames.

A thin wrapper: the network is face-alignment's; prior boxes, box and 5-landmark decoding and
NMS are here because face-alignment's detector runs one image at a time and discards the
landmarks. Input frames are downscaled so their longest side is `max_side`; boxes and points
are mapped back to source pixels.
"""

from __future__ import annotations

import logging
import pickle
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.ops import nms as nms_boxes

from pipeline.device import batch_for, to_device, tuned_kernels
from pipeline.faces.align import box_iou
from pipeline.faces.decode import NetOutputs, PendingDecode, launch_decode
from pipeline.faces.detection import (
    FIVE_POINTS,
    RETINAFACE_BOXES,
    Detections,
    FaceDetector,
    Joined,
    Pending,
)
from pipeline.weights import resolve_file
from schemas.config import DetectorConfig

log = logging.getLogger(__name__)

# RetinaFace MobileNet-0.25 anchor layout and box-coding variances (Deng et al. 2020).
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)


def autocast(device: str, dtype: str) -> torch.autocast:
    """Mixed precision for a face network: a no-op for float32."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=getattr(torch, dtype), enabled=dtype != "float32")


@lru_cache(maxsize=8)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors (cx, cy, w, h), normalised to the image, float32 [A, 4], for an input size."""
    out = []
    for sizes, step in zip(MIN_SIZES, STEPS):
        fh, fw = -(-height // step), -(-width // step)
        for i, j in product(range(fh), range(fw)):
            for s in sizes:
                out.append(
                    ((j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height)
                )
    return np.asarray(out, np.float32)


def load_state_file(path: str, name: str) -> Any:
    """torch.load(weights_only=True) of a local weights file, `name` being what the config
    gave. A file holding pickled objects beyond tensors (code could run on load) or one that is
    not a torch file is refused with a one-line ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = "Unsupported global" in str(exc) or "WeightsUnpickler" in str(exc)
        why = (
            "it holds pickled Python objects beyond tensors, which could run code on load; "
            "re-save it as a plain state dict of tensors from a trusted environment"
            if unsafe
            else "it is not a torch weights file"
        )
        raise ValueError(f"refusing to load weights {name}: {why}") from None
    except (RuntimeError, EOFError, OSError) as exc:
        kind = type(exc).__name__
        raise ValueError(
            f"cannot read weights {name} ({kind}): not a torch weights file, or truncated"
        ) from None


def load_weights(
    net: torch.nn.Module, weights: str, device: str, cache: str | None = None
) -> torch.nn.Module:
    """Load a state dict (path, URI or URL; plain, or under "state_dict"; DataParallel's
    "module." prefix removed) into `net` with weights_only=True; return it on `device`, eval."""
    state = load_state_file(resolve_file(weights, cache), weights)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return net.to(device).eval()


def fuse_conv_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an nn.Sequential into that
    conv, in place (the BN becomes Identity); returns `net`. Inference only (eval mode): the
    outputs stay the same up to float rounding, and RetinaFace's 47 BN passes over full-size
    feature maps (about an eighth of its CPU time) disappear."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in net.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = torch.nn.Identity()
    return net


def import_fa(module: str) -> Any:
    """Import a face-alignment submodule that needs only torch (the network definitions). If
    face-alignment's package __init__ cannot run because an import-time dependency the face
    stage never uses is missing (scikit-image, numba on a bare GPU image), the parent
    packages are registered without running their __init__ and the submodule loads alone."""
    import importlib
    import sys
    import types

    try:
        return importlib.import_module(module)
    except ImportError:
        spec = importlib.util.find_spec("face_alignment")
        if spec is None or not spec.submodule_search_locations:
            raise
        root = list(spec.submodule_search_locations)[0]
        parts = module.split(".")
        for i in range(1, len(parts)):
            name = ".".join(parts[:i])
            mod = sys.modules.get(name)
            if mod is None or not hasattr(mod, "__path__"):
                stub = types.ModuleType(name)
                stub.__path__ = [str(Path(root, *parts[1:i]))]
                sys.modules[name] = stub
        log.warning("face_alignment's package init failed to import; loaded %s alone", module)
        return importlib.import_module(module)


def load_retinaface(weights: str, device: str, cache: str | None = None) -> torch.nn.Module:
    """face-alignment's RetinaFace network with weights from a path, URI or URL, prepared for
    inference: conv+BN fused and channels-last memory layout (NHWC). Together 1.46x faster
    than the plain network on 2 CPU cores (oneDNN's depthwise convolutions prefer NHWC; so do
    cuDNN's half-precision ones)."""
    fa = import_fa("face_alignment.detection.retinaface.net_retinaface")
    RetinaFace, cfg_mnet = fa.RetinaFace, fa.cfg_mnet  # noqa: N806

    net = fuse_conv_bn(load_weights(RetinaFace(cfg=cfg_mnet), weights, device, cache))
    return net.to(memory_format=torch.channels_last)


def frames_tensor(frames: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 RGB frames [N, H, W, 3] (numpy or a tensor anywhere) as a tensor on `device`; the
    host -> device copy happens once, as uint8, through pinned memory to a GPU."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    return to_device(frames, device)


@lru_cache(maxsize=16)
def _area_taps(n_in: int, n_out: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's INTER_AREA shrink along one axis as taps: (input indices int64 [n_out, K],
    weights float32 [n_out, K]). Output pixel i averages input [i s, (i + 1) s) with
    s = n_in / n_out, fractional pixels weighted by their overlap; K = ceil(s) + 1 at most."""
    s = n_in / n_out
    lo = np.arange(n_out) * s
    first = np.floor(lo).astype(np.int64)
    k = int(np.ceil(s)) + 1
    idx = first[:, None] + np.arange(k)[None, :]
    wts = np.clip(np.minimum(idx + 1, (lo + s)[:, None]) - np.maximum(idx, lo[:, None]), 0, None)
    idx = np.minimum(idx, n_in - 1)
    return (
        torch.from_numpy(idx).to(device),
        torch.from_numpy((wts / s).astype(np.float32)).to(device),
    )


def area_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Float images [N, C, H, W] -> [N, C, h, w] (h <= H, w <= W) as OpenCV's INTER_AREA
    shrinks, separably with a few taps per output pixel, on the images' device."""
    for dim, n_out in ((2, h), (3, w)):
        n_in = x.shape[dim]
        if n_in == n_out:
            continue
        if n_in % n_out == 0:  # integer factor: plain box average
            f = n_in // n_out
            x = torch.nn.functional.avg_pool2d(x, (f, 1) if dim == 2 else (1, f))
            continue
        idx, wts = _area_taps(n_in, n_out, str(x.device))
        k = idx.shape[1]
        g = x.index_select(dim, idx.reshape(-1))
        shape = list(x.shape)
        shape[dim : dim + 1] = [n_out, k]
        g = g.reshape(shape)
        wv = wts.view([n_out, k] + [1] * (x.dim() - dim - 1))
        x = (g * wv).sum(dim + 1)
    return x


def input_frames(frames: torch.Tensor, max_side: int) -> tuple[torch.Tensor, float]:
    """uint8 RGB [N, H, W, 3] on any device -> (the frames at the detector's input scale, RGB
    [N, h, w, 3] in uint8 levels: uint8 on a CPU, float32 elsewhere; the scale h / H <= 1).
    Frames whose longest side exceeds `max_side` are area-downscaled as OpenCV's INTER_AREA
    does (rounded to uint8 levels)."""
    n, h, w = frames.shape[:3]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return frames, scale
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if frames.device.type == "cpu":  # cv2 itself: far faster on a CPU
        small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames.numpy()]
        return torch.from_numpy(np.stack(small)), scale
    x = area_resize(frames.permute(0, 3, 1, 2).float(), size[1], size[0]).round_()
    return x.permute(0, 2, 3, 1), scale


def network_input(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB [N, h, w, 3] in uint8 levels (any dtype) -> the network's input: mean-subtracted
    BGR [N, 3, h, w] in channels-last memory, `dtype`, on x's device."""
    x = x.permute(0, 3, 1, 2).flip(1).float()  # RGB -> BGR, NCHW view
    mean = torch.tensor(BGR_MEAN, device=x.device).view(1, 3, 1, 1)
    return (x - mean).to(dtype).contiguous(memory_format=torch.channels_last)


def prepare_frames(
    frames: torch.Tensor, max_side: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, float]:
    """uint8 RGB [N, H, W, 3] on any device -> (the network's input: mean-subtracted
    BGR [N, 3, h, w] in channels-last memory, `dtype`; the scale h / H <= 1), all on the frames'
    device (`input_frames` then `network_input`)."""
    x, scale = input_frames(frames, max_side)
    return network_input(x, dtype), scale


# The anchors of every level (strides 8, 16, 32) sit on a grid that repeats every 32 input px:
# a window whose origin is a multiple of this sees the same anchors as the whole frame.
ROI_GRID = 32


def roi_windows(
    anchors: np.ndarray, scale: float, height: int, width: int, min_side: int, enlarge: float
) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Detector windows around tracked faces, one size for all. anchors: boxes [R, 4] xyxy,
    source px; the frames are [height, width] at the detector's input scale `scale`.

    The window is square, side = the largest enlarged box (`enlarge` x the box's longer side)
    plus one grid step, rounded up to the 32-px anchor grid and at least `min_side`; along an
    axis where that reaches the frame's size (rounded up to the grid) it spans the frame. Each
    window's origin is on the grid, as close to centred on its box as the grid allows, and no
    further outside the frame than the grid needs.
    -> (origins int64 [R, 2] (x0, y0) input px, the window size (height, width) in input px,
    fits bool [R]: the enlarged box, clipped to the frame, lies inside its window)."""
    b = anchors.astype(np.float64) * scale
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = enlarge * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])[:, None] / 2
    limit = np.array([width, height], np.float64)
    lo = np.clip(centre - half, 0, limit)
    hi = np.clip(centre + half, 0, limit)
    need = float((2 * half).max(initial=0.0)) + ROI_GRID
    side = max(min_side, int(np.ceil(need / ROI_GRID)) * ROI_GRID)
    full = np.ceil(limit / ROI_GRID).astype(np.int64) * ROI_GRID
    size = np.minimum(side, full)  # (width, height)
    top = np.ceil(np.maximum(limit - size, 0) / ROI_GRID) * ROI_GRID
    origin = np.clip(np.round((centre - size / 2) / ROI_GRID) * ROI_GRID, 0, top)
    fits = ((lo >= origin) & (hi <= origin + size)).all(1) & (hi - lo > 0).all(1)
    return origin.astype(np.int64), (int(size[1]), int(size[0])), fits


def cut_windows(
    x: torch.Tensor, owner: np.ndarray, origins: np.ndarray, size: tuple[int, int]
) -> torch.Tensor:
    """Windows [R, wh, ww, 3] (size = (wh, ww)) from frames x [N, h, w, 3] (uint8 levels, any
    device): window r of frame owner[r] at origins[r] = (x0, y0); outside the frame it is the
    detector's mean colour, i.e. zero input, as the network's zero padding sees past the edge."""
    n, h, w = x.shape[:3]
    wh, ww = size
    fill = torch.tensor(BGR_MEAN[::-1].copy(), device=x.device).to(x.dtype)
    out = fill.expand(len(owner), wh, ww, 3).clone()
    for r, (o, (x0, y0)) in enumerate(zip(owner.tolist(), origins.tolist())):
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + ww, w), min(y0 + wh, h)
        if xb > xa and yb > ya:
            out[r, ya - y0 : yb - y0, xa - x0 : xb - x0] = x[o, ya:yb, xa:xb]
    return out


def pick_tracked(dets: Detections, anchor: np.ndarray) -> Detections:
    """The one detection of a window that is the tracked face: the largest IoU with the
    anchor box (the track's last box); none if no detection overlaps it. Other faces a window
    catches (a neighbour, partly cut off at the window's edge) wait for the next keyframe."""
    if len(dets.boxes) == 0:
        return dets
    iou = box_iou(anchor[None].astype(np.float64), dets.boxes.astype(np.float64))[0]
    k = int(iou.argmax())
    if iou[k] <= 0:
        return Detections.empty()
    return Detections(dets.boxes[k : k + 1], dets.scores[k : k + 1], dets.landmarks[k : k + 1])


def merge_faces(parts: list[Detections], nms: float, max_faces: int) -> Detections:
    """One frame's detections from several windows -> one Detections, strongest first;
    a face found by two windows (two tracks over one face) is kept once (IoU > nms)."""
    parts = [p for p in parts if len(p.boxes)]
    if not parts:
        return Detections.empty()
    boxes = np.concatenate([p.boxes for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    pts = np.concatenate([p.landmarks for p in parts])
    keep = nms_boxes(torch.from_numpy(boxes), torch.from_numpy(scores), nms).numpy()[:max_faces]
    return Detections(boxes[keep], scores[keep], pts[keep])


@lru_cache(maxsize=16)
def device_priors(height: int, width: int, device: str) -> torch.Tensor:
    """The anchors of an input size on `device`, made once (not copied every batch)."""
    return torch.from_numpy(prior_boxes(height, width)).to(device)


@lru_cache(maxsize=64)
def device_size(width: int, height: int, scale: float, device: str) -> torch.Tensor:
    """(W, H) / scale, float32 [2] on `device`: normalised -> source px, made once."""
    return torch.tensor([width, height], dtype=torch.float32, device=device) / scale


class RetinaFaceDetector(FaceDetector):
    """Batched face detection. `__call__(frames uint8 RGB [N, H, W, 3], numpy or a tensor on
    any device) -> list of N Detections`. Frames in one call must share a size (frames of one
    video do). Everything up to the kept detections runs on `device`."""

    kind = "retinaface"
    points = FIVE_POINTS  # landmarks [M, 5, 2]: eyes, nose tip, mouth corners
    boxes = RETINAFACE_BOXES
    roi_search = True

    def __init__(
        self,
        cfg: DetectorConfig,
        device: str = "cpu",
        cache: str | None = None,
        net: torch.nn.Module | None = None,
        dtype: str = "float32",
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.net = net if net is not None else load_retinaface(cfg.weights, device, cache)
        self.batch_size = batch_for(device, cfg.batch_size, cpu=8, gpu=256)
        # Half precision input where the network runs in half (autocast would cast anyway).
        self._in_dtype = torch.float32 if dtype == "float32" or device == "cpu" else None
        self.timer: Any = None  # optional StageTimer (bench): splits net / post-processing

    def _prepare(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, float]:
        x = frames_tensor(frames, self.device)
        dt = self._in_dtype or getattr(torch, self.dtype)
        return prepare_frames(x, self.cfg.max_side, dt)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> list[Detections]:
        return self.launch(frames).result()

    @torch.inference_mode()
    def launch(self, frames: np.ndarray | torch.Tensor) -> Pending:
        """Queue the detection of frames uint8 RGB [N, H, W, 3] in batches of `batch_size`
        and return without waiting for the device (see FaceDetector.launch)."""
        step = self.batch_size
        return Joined([self._start(*self._prepare(frames[s : s + step]))
                       for s in range(0, len(frames), step)])  # fmt: skip

    def _run(self, x: torch.Tensor, scale: float) -> list[Detections]:
        """Network + decoding of prepared inputs x [N, 3, h, w] at `scale` -> N Detections
        in (window) source px."""
        return self._start(x, scale).result()

    def _start(self, x: torch.Tensor, scale: float) -> PendingDecode:
        """`_run` queued: the network and the decoding's device part, then the packed copy
        started; nothing waits for the device (with a StageTimer attached, it is read at once
        so each step is timed on its own)."""
        timer = self.timer
        h, w = x.shape[2:]
        with autocast(self.device, self.dtype), tuned_kernels(x.device):
            loc, conf, landm = self.net(x)
        if timer is not None:
            timer.mark("detect_net", x.device)
        loc, conf, landm = loc.float(), conf.float(), landm.float()
        priors = device_priors(h, w, str(loc.device))
        size = device_size(w, h, float(scale), str(loc.device))
        pending = launch_decode(NetOutputs(loc, conf, landm, priors, size), self.cfg)
        if timer is not None:
            pending.result()
            timer.mark("detect_post", None)
        return pending

    @torch.inference_mode()
    def detect_rois(
        self, frames: np.ndarray | torch.Tensor, anchors: list[np.ndarray]
    ) -> list[Detections]:
        """Detection around tracked faces only. frames: uint8 RGB [N, H, W, 3] (numpy or a
        tensor anywhere); anchors[i]: boxes [M_i, 4] xyxy source px of the faces tracked into
        frame i (their last boxes). -> N Detections, source px, at most one face per anchor.

        Each anchor gets a window at the keyframes' input scale, on their 32-px anchor grid
        (`roi_windows`: one size per call, fitted to the largest enlarged face), so the
        network sees the same pixels and anchors as on the whole frame; all windows of the
        call go through the network in batches. A frame where some enlarged anchor does not
        fit its window is detected whole, and so are all frames when the windows would cost
        as much as the frames. A frame without anchors has no
        detections: new faces are found at the next keyframe."""
        out = [Detections.empty() for _ in range(len(frames))]
        todo = [i for i, a in enumerate(anchors) if len(a)]
        if not todo:
            return out
        roi = self.cfg.roi
        dt = self._in_dtype or getattr(torch, self.dtype)
        x = frames_tensor(frames, self.device)
        x = x[torch.as_tensor(todo, device=x.device)]
        small, scale = input_frames(x, self.cfg.max_side)
        n, h, w = small.shape[:3]
        owner = np.repeat(np.arange(n), [len(anchors[i]) for i in todo])
        boxes = np.concatenate([anchors[i] for i in todo]).reshape(-1, 4)
        origins, size, fits = roi_windows(boxes, scale, h, w, roi.min_side, roi.enlarge)
        whole = np.zeros(n, bool)
        np.logical_or.at(whole, owner, ~fits)
        win = ~whole[owner]  # windows of frames that are not detected whole
        if win.sum() * size[0] * size[1] >= (~whole).sum() * h * w:
            whole[:] = True  # windows would cost as much as the frames: detect them whole
            win[:] = False
        found: list[list[Detections]] = [[] for _ in range(n)]
        if win.any():
            idx = np.flatnonzero(win)
            per = max(self.batch_size, self.batch_size * (h * w) // (size[0] * size[1]))
            for s in range(0, len(idx), per):
                part = idx[s : s + per]
                crops = cut_windows(small, owner[part], origins[part], size)
                dets = self._run(network_input(crops, dt), scale)
                for r, d in zip(part.tolist(), dets):
                    shift = origins[r].astype(np.float32) / scale
                    d = pick_tracked(
                        Detections(d.boxes + np.tile(shift, 2), d.scores, d.landmarks + shift),
                        boxes[r],
                    )
                    found[owner[r]].append(d)
        full = np.flatnonzero(whole)
        for s in range(0, len(full), self.batch_size):
            part = full[s : s + self.batch_size]
            sel = torch.as_tensor(part, device=small.device)
            for k, d in zip(part.tolist(), self._run(network_input(small[sel], dt), scale)):
                found[k] = [d]
        for k, i in enumerate(todo):
            out[i] = merge_faces(found[k], self.cfg.nms, self.cfg.max_faces)
        return out
