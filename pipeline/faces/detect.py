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
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms

from pipeline.device import batch_for
from pipeline.weights import resolve_file
from schemas.config import DetectorConfig

log = logging.getLogger(__name__)

# RetinaFace MobileNet-0.25 anchor layout and box-coding variances (Deng et al. 2020).
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)


def autocast(device: str, dtype: str) -> torch.autocast:
    """Mixed precision for a face network: a no-op for float32."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=getattr(torch, dtype), enabled=dtype != "float32")


class Detections(NamedTuple):
    """Faces of one frame, strongest first. boxes: float32 [M, 4] xyxy source px; scores:
    float32 [M]; landmarks: float32 [M, 5, 2] (eye on image left, eye on image right, nose
    tip, mouth corner left, mouth corner right), source px."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> Detections:
        """No face."""
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )


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


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[A, 4] regression + [A, 4] priors -> [A, 4] normalised xyxy."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """[A, 10] regression + [A, 4] priors -> [A, 5, 2] normalised points."""
    pts = pre.view(-1, 5, 2)
    return priors[:, None, :2] + pts * VARIANCE[0] * priors[:, None, 2:]


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
    host -> device copy happens once, as uint8."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    return frames.to(device, non_blocking=True)


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


def prepare_frames(
    frames: torch.Tensor, max_side: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, float]:
    """uint8 RGB [N, H, W, 3] on any device -> (the network's input: mean-subtracted BGR
    [N, 3, h, w] in channels-last memory, `dtype`; the scale h / H <= 1), all on the frames'
    device. Frames whose longest side exceeds `max_side` are area-downscaled as OpenCV's
    INTER_AREA does (rounded to uint8 levels)."""
    n, h, w = frames.shape[:3]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0 and frames.device.type == "cpu":  # cv2 itself: far faster on a CPU
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames.numpy()]
        frames, scale_done = torch.from_numpy(np.stack(small)), True
    else:
        scale_done = scale >= 1.0
    x = frames.permute(0, 3, 1, 2).flip(1).float()  # RGB -> BGR, NCHW view
    if not scale_done:
        hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
        x = area_resize(x, hs, ws).round_()  # uint8 levels, as cv2 gives
    mean = torch.tensor(BGR_MEAN, device=x.device).view(1, 3, 1, 1)
    x = (x - mean).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, scale


@lru_cache(maxsize=16)
def _device_priors(height: int, width: int, device: str) -> torch.Tensor:
    return torch.from_numpy(prior_boxes(height, width)).to(device)


def decode_batch(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landm: torch.Tensor,
    priors: torch.Tensor,
    size: torch.Tensor,
    cfg: DetectorConfig,
) -> list[Detections]:
    """The network's outputs for N frames (loc [N, A, 4], conf [N, A, 2], landm [N, A, 10],
    float32) -> N Detections in source px (`size` = (W, H) / scale, float32 [2]).

    Candidates over the threshold are decoded for the whole batch at once, one
    `batched_nms` runs with the frame index as the category, then the min-size filter and
    `max_faces` per frame (strongest first); only the kept rows come to the host."""
    n = loc.shape[0]
    scores = conf[..., 1]
    fi, ai = torch.nonzero(scores > cfg.threshold, as_tuple=True)
    if fi.numel() == 0:
        return [Detections.empty() for _ in range(n)]
    pri = priors[ai]
    boxes = decode_boxes(loc[fi, ai], pri) * size.repeat(2)
    pts = decode_landmarks(landm[fi, ai], pri) * size
    sc = scores[fi, ai]
    keep = batched_nms(boxes, sc, fi, cfg.nms)  # decreasing score
    boxes, pts, sc, fi = boxes[keep], pts[keep], sc[keep], fi[keep]
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    big = side >= cfg.min_size_px
    boxes, pts, sc, fi = boxes[big], pts[big], sc[big], fi[big]
    order = torch.sort(fi, stable=True).indices  # by frame, strongest first within a frame
    packed = torch.cat([boxes[order], sc[order, None], pts[order].flatten(1)], 1).cpu().numpy()
    frame_of = fi[order].cpu().numpy()
    counts = np.bincount(frame_of, minlength=n)
    out, start = [], 0
    for c in counts.tolist():
        part = packed[start : start + min(c, cfg.max_faces)]
        start += c
        if len(part) == 0:
            out.append(Detections.empty())
            continue
        out.append(
            Detections(
                np.ascontiguousarray(part[:, :4]),
                np.ascontiguousarray(part[:, 4]),
                np.ascontiguousarray(part[:, 5:].reshape(-1, 5, 2)),
            )
        )
    return out


class RetinaFaceDetector:
    """Batched face detection. `__call__(frames uint8 RGB [N, H, W, 3], numpy or a tensor on
    any device) -> list of N Detections`. Frames in one call must share a size (frames of one
    video do). Everything up to the kept detections runs on `device`."""

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
        self.batch_size = batch_for(device, cfg.batch_size, cpu=8, gpu=32)
        # Half precision input where the network runs in half (autocast would cast anyway).
        self._in_dtype = torch.float32 if dtype == "float32" or device == "cpu" else None
        self.timer: Any = None  # optional StageTimer (bench): splits net / post-processing

    def _prepare(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, float]:
        x = frames_tensor(frames, self.device)
        dt = self._in_dtype or getattr(torch, self.dtype)
        return prepare_frames(x, self.cfg.max_side, dt)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> list[Detections]:
        if len(frames) == 0:
            return []
        out: list[Detections] = []
        for s in range(0, len(frames), self.batch_size):
            out.extend(self._detect(frames[s : s + self.batch_size]))
        return out

    def _detect(self, frames: np.ndarray | torch.Tensor) -> list[Detections]:
        timer = self.timer
        x, scale = self._prepare(frames)
        h, w = x.shape[2:]
        with autocast(self.device, self.dtype):
            loc, conf, landm = self.net(x)
        if timer is not None:
            timer.mark("detect_net", x.device)
        loc, conf, landm = loc.float(), conf.float(), landm.float()
        priors = _device_priors(h, w, str(loc.device))
        size = torch.tensor([w, h], dtype=torch.float32, device=loc.device) / scale
        dets = decode_batch(loc, conf, landm, priors, size, self.cfg)
        if timer is not None:
            timer.mark("detect_post", None)
        return dets
