"""The face detectors by kind: `faces.detector.kind` names one (default `retinaface`).

Each detector is one module implementing pipeline.faces.detection.FaceDetector (RetinaFace:
detect.py). Another is added with `register_detector(MyDetector)`, from any module (a test
file, a plugin) before the face stage is built; nothing else in the stage changes, since its
point layout and box convention travel with the class.
"""

from __future__ import annotations

from pipeline.faces.detect import RetinaFaceDetector
from pipeline.faces.detection import FaceDetector
from schemas.config import DetectorConfig

DETECTORS: dict[str, type[FaceDetector]] = {}


def register_detector(cls: type[FaceDetector]) -> type[FaceDetector]:
    """Make `cls` buildable as `faces.detector.kind=<cls.kind>` (usable as a decorator). A
    kind registered twice by different classes is an error."""
    if not (isinstance(cls, type) and issubclass(cls, FaceDetector)):
        raise TypeError(f"{cls!r} is not a FaceDetector subclass")
    known = DETECTORS.get(cls.kind)
    if known is not None and known is not cls:
        raise ValueError(f"detector kind {cls.kind!r} is already {known.__name__}")
    DETECTORS[cls.kind] = cls
    return cls


def detector_class(kind: str) -> type[FaceDetector]:
    """The class registered as `kind`; a ValueError naming the known kinds otherwise."""
    if kind not in DETECTORS:
        raise ValueError(
            f"unknown faces.detector.kind {kind!r}; known: {', '.join(sorted(DETECTORS))}"
        )
    return DETECTORS[kind]


def build_detector(
    cfg: DetectorConfig, device: str = "cpu", cache: str | None = None, dtype: str = "float32"
) -> FaceDetector:
    """The detector `cfg.kind` names, its weights resolved through the cache."""
    return detector_class(cfg.kind)(cfg, device, cache, dtype=dtype)


register_detector(RetinaFaceDetector)
