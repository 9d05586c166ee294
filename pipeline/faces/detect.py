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
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torchvision.ops import nms

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


def load_retinaface(weights: str, device: str, cache: str | None = None) -> torch.nn.Module:
    """face-alignment's RetinaFace network with weights from a path, URI or URL, prepared for
    inference: conv+BN fused and channels-last memory layout (NHWC). Together 1.46x faster
    than the plain network on 2 CPU cores (oneDNN's depthwise convolutions prefer NHWC; so do
    cuDNN's half-precision ones)."""
    from face_alignment.detection.retinaface.net_retinaface import RetinaFace, cfg_mnet

    net = fuse_conv_bn(load_weights(RetinaFace(cfg=cfg_mnet), weights, device, cache))
    return net.to(memory_format=torch.channels_last)


class RetinaFaceDetector:
    """Batched face detection. `__call__(frames uint8 RGB [N, H, W, 3]) -> list of N
    Detections`. Frames in one call must share a size (frames of one video do)."""

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

    def _prepare(self, frames: np.ndarray) -> tuple[torch.Tensor, float]:
        n, h, w = frames.shape[:3]
        scale = min(1.0, self.cfg.max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        x = frames[..., ::-1].astype(np.float32) - BGR_MEAN  # RGB -> BGR, mean-subtracted
        # [N, H, W, 3] memory viewed as NCHW: the channels-last layout the network runs in.
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), scale

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> list[Detections]:
        if len(frames) == 0:
            return []
        out: list[Detections] = []
        for s in range(0, len(frames), self.batch_size):
            out.extend(self._detect(frames[s : s + self.batch_size]))
        return out

    def _detect(self, frames: np.ndarray) -> list[Detections]:
        x, scale = self._prepare(frames)
        h, w = x.shape[2:]
        with autocast(self.device, self.dtype):
            loc, conf, landm = self.net(x.to(self.device))
        loc, conf, landm = loc.float(), conf.float(), landm.float()
        priors = torch.from_numpy(prior_boxes(h, w)).to(loc.device)
        size = torch.tensor([w, h], dtype=torch.float32, device=loc.device) / scale
        results = []
        for i in range(x.shape[0]):
            scores = conf[i, :, 1]
            keep = scores > self.cfg.threshold
            if not bool(keep.any()):
                results.append(Detections.empty())
                continue
            boxes = decode_boxes(loc[i][keep], priors[keep]) * size.repeat(2)
            pts = decode_landmarks(landm[i][keep], priors[keep]) * size
            sc = scores[keep]
            order = nms(boxes.float(), sc.float(), self.cfg.nms)
            boxes, pts, sc = boxes[order], pts[order], sc[order]
            side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            big = side >= self.cfg.min_size_px
            boxes, pts, sc = boxes[big], pts[big], sc[big]
            m = self.cfg.max_faces
            results.append(
                Detections(
                    boxes[:m].float().cpu().numpy(),
                    sc[:m].float().cpu().numpy(),
                    pts[:m].float().cpu().numpy(),
                )
            )
        return results
