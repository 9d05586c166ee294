"""What a face detector is to the face stage: the one interface every detector implements.

A detector maps frames to `Detections` (boxes, scores, a few facial points per face) and
declares, as class attributes, what the rest of the stage needs to know about them:

* `kind`: its name in the registry (`faces.detector.kind`, pipeline/faces/detectors.py) and in
  a checkpoint's preprocessing record;
* `points`: the layout of its facial points (which face feature each one is, as iBUG-68
  groups), so alignment builds its template from the mean face in the same order
  (`faces.landmarks.kind=retina5` aligns on these points);
* `boxes`: its box convention (how FAN's crop window is placed around one of its boxes, as
  face-alignment does for RetinaFace's boxes);
* `roi_search`: whether `detect_rois` (detection around tracked faces only) is implemented.

Detectors live one per module (RetinaFace: detect.py) and are built by kind through the
registry. This module imports no other face module, so every detector module can import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch


class Detections(NamedTuple):
    """Faces of one frame, strongest first. boxes: float32 [M, 4] xyxy source px, in the
    detector's box convention; scores: float32 [M]; landmarks: float32 [M, P, 2] source px,
    in the detector's point layout (P = len(points.names))."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty(points: int = 5) -> Detections:
        """No face."""
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, points, 2), np.float32),
        )


class Pending(Protocol):
    """Detections still being computed on the device; `result()` waits for them."""

    def result(self) -> list[Detections]:
        """The detections, one per frame."""
        ...


class Ready:
    """Detections already on the host, as a Pending."""

    def __init__(self, dets: list[Detections]) -> None:
        self.dets = dets

    def result(self) -> list[Detections]:
        """The detections, one per frame."""
        return self.dets


class Joined:
    """Several Pendings (a call's batches) as one: their detections in order."""

    def __init__(self, parts: Sequence[Pending]) -> None:
        self.parts = list(parts)

    def result(self) -> list[Detections]:
        """The detections of every part, in order."""
        return [d for p in self.parts for d in p.result()]


@dataclass(frozen=True)
class PointLayout:
    """The facial points a detector gives, in its order: `names[i]` is point i, the mean of
    the iBUG-68 points `ibug68[i]` (so the alignment template can be built from the 68-point
    mean face). "left"/"right" are as seen in the image."""

    names: tuple[str, ...]
    ibug68: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ibug68) or not self.names:
            raise ValueError("a point layout needs one iBUG-68 group per point name")

    def template(self, mean_face: np.ndarray) -> np.ndarray:
        """The layout's points on the 68-point mean face [68, 2] -> float64 [P, 2]."""
        return np.stack([mean_face[list(g)].mean(0) for g in self.ibug68]).astype(np.float64)


# The five points of RetinaFace (and InsightFace's detectors): eye centres, nose tip, mouth
# corners.
FIVE_POINTS = PointLayout(
    names=("eye_image_left", "eye_image_right", "nose_tip", "mouth_image_left",
           "mouth_image_right"),
    ibug68=(tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,)),
)  # fmt: skip


@dataclass(frozen=True)
class BoxConvention:
    """Where FAN's square crop goes for a box of this detector (face-alignment's rule): side =
    200 * (w + h) / `reference_scale` px, centred on the box centre moved up by
    `centre_y_offset` * h. A detector with tighter or looser boxes declares other values."""

    reference_scale: float
    centre_y_offset: float


# face-alignment's values for RetinaFace's boxes (face_alignment.api / utils).
RETINAFACE_BOXES = BoxConvention(reference_scale=165.0, centre_y_offset=0.12)


class FaceDetector(ABC):
    """A batched face detector. Subclasses declare `kind`, `points` and `boxes` (checked when
    the class is defined), are built as `cls(cfg: DetectorConfig, device, cache, dtype=...)`
    and set `device` (where they run: the stage keeps its frames there)."""

    kind: ClassVar[str]
    points: ClassVar[PointLayout]
    boxes: ClassVar[BoxConvention]
    roi_search: ClassVar[bool] = False
    device: str
    timer: Any = None  # an optional pipeline.faces.timing.StageTimer (bench)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, kind in (("kind", str), ("points", PointLayout), ("boxes", BoxConvention)):
            if not isinstance(getattr(cls, name, None), kind):
                raise TypeError(f"detector {cls.__name__} must declare {name}: {kind.__name__}")

    @abstractmethod
    def __call__(self, frames: np.ndarray | torch.Tensor) -> list[Detections]:
        """frames uint8 RGB [N, H, W, 3] (numpy, or a tensor on any device; one size per
        call) -> N Detections in source px."""

    def launch(self, frames: np.ndarray | torch.Tensor) -> Pending:
        """`__call__` started without waiting for the device: the host goes on (tracking the
        previous chunk) while it runs, and reads the detections with `.result()`. A detector
        that does not split its work computes them here."""
        return Ready(self(frames))

    def detect_rois(
        self, frames: np.ndarray | torch.Tensor, anchors: list[np.ndarray]
    ) -> list[Detections]:
        """Detection around tracked faces only: anchors[i] are boxes [M_i, 4] of the faces
        tracked into frame i. Only where `roi_search` is declared True."""
        raise NotImplementedError(f"detector {self.kind} has no ROI search (roi_search=False)")
