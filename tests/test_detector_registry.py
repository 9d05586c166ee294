"""The detector registry (issue 26): `faces.detector.kind` picks a detector registered in
pipeline/faces/detectors.py; each one declares its point layout and box convention, so a new
kind is one class, here declared and registered from this file alone.

Real parts: the real RetinaFace weights on a real GRID clip (cut to 1 s), the face pipeline as
`vaerr infer` builds it from the config.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.faces.detect import RetinaFaceDetector
from pipeline.faces.detection import (
    FIVE_POINTS,
    RETINAFACE_BOXES,
    Detections,
    FaceDetector,
    PointLayout,
)
from pipeline.faces.detectors import DETECTORS, build_detector, register_detector
from pipeline.faces.extract import FacePipeline
from pipeline.model.checkpoint import init_checkpoint, model_id, preprocessing_from_config
from schemas.config import DetectorConfig, config_hash, load_config
from schemas.model import ModelConfig
from tests.conftest import asset, face_overrides

CLIP = "videos/grid_lbbc2a.mpg"
ONE_SECOND = ["video.end_s=1.0"]
REVERSED = (4, 3, 2, 1, 0)


class ReorderedRetina(FaceDetector):
    """A second kind: RetinaFace's faces with its five points in reverse order, and a layout
    that says so."""

    kind = "test_reordered"
    points = PointLayout(
        names=tuple(FIVE_POINTS.names[i] for i in REVERSED),
        ibug68=tuple(FIVE_POINTS.ibug68[i] for i in REVERSED),
    )
    boxes = RETINAFACE_BOXES
    order = REVERSED

    def __init__(
        self, cfg: DetectorConfig, device: str = "cpu", cache: str | None = None,
        dtype: str = "float32",
    ) -> None:  # fmt: skip
        self.inner = RetinaFaceDetector(cfg, device, cache, dtype=dtype)
        self.device = self.inner.device

    def __call__(self, frames: np.ndarray | torch.Tensor) -> list[Detections]:
        return [
            Detections(d.boxes, d.scores, d.landmarks[:, list(self.order)])
            for d in self.inner(frames)
        ]


class MislabelledRetina(ReorderedRetina):
    """The same reversed points, but declaring RetinaFace's layout: alignment must then go
    wrong, which shows that the declared layout is what alignment uses."""

    kind = "test_mislabelled"
    points = FIVE_POINTS


register_detector(ReorderedRetina)
register_detector(MislabelledRetina)


def rows_of(pipe: FacePipeline) -> dict[str, np.ndarray]:
    parts = list(pipe.run(str(asset(CLIP))))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def baseline(retina_pipeline) -> dict[str, np.ndarray]:
    """RetinaFace's rows (the default kind, built from the config) on the clip's first second."""
    cfg = load_config(None, face_overrides() + ONE_SECOND)
    pipe = FacePipeline(cfg, mean_face=retina_pipeline.mean_face)
    assert type(pipe.detector) is RetinaFaceDetector
    return rows_of(pipe)


@pytest.mark.parametrize(("kind", "same"), [("test_reordered", True), ("test_mislabelled", False)])
def test_a_registered_kind_runs_the_face_pipeline(baseline, retina_pipeline, kind, same):
    cfg = load_config(None, face_overrides() + ONE_SECOND + [f"faces.detector.kind={kind}"])
    pipe = FacePipeline(cfg, mean_face=retina_pipeline.mean_face)
    assert type(pipe.detector) is DETECTORS[kind]
    rows = rows_of(pipe)
    np.testing.assert_array_equal(rows["box_xyxy"], baseline["box_xyxy"])
    np.testing.assert_array_equal(rows["track_id"], baseline["track_id"])
    # the points come in the detector's order ...
    np.testing.assert_allclose(rows["landmarks"], baseline["landmarks"][:, list(REVERSED)])
    # ... and the crops are RetinaFace's exactly when the detector declares that order
    diff = np.abs(rows["crop"].astype(np.int16) - baseline["crop"]).mean()
    assert bool(diff < 0.5) == same, diff


@pytest.mark.parametrize("kind", ["retinaface", "test_reordered"])
def test_the_checkpoint_names_the_detector_and_the_default_keeps_ids(kind):
    """The preprocessing record names the kind; the default leaves config_hash and model_id
    as they were before kinds existed, another kind changes both."""
    cfg = load_config(None, [f"faces.detector.kind={kind}"])
    pre = preprocessing_from_config(cfg)
    assert pre["detector"] == kind
    ckpt = init_checkpoint(ModelConfig(arch="ssvaerr_tiny"), pre, seed=0)
    before = dict(pre)
    before.pop("detector")
    old = init_checkpoint(ModelConfig(arch="ssvaerr_tiny"), before, seed=0)
    default = config_hash(load_config(None, []))
    assert (model_id(ckpt) == model_id(old)) is (kind == "retinaface")
    assert (config_hash(cfg) == default) is (kind == "retinaface")


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        ({"kind": "x", "boxes": RETINAFACE_BOXES}, TypeError),  # no point layout
        ({"kind": "x", "points": FIVE_POINTS}, TypeError),  # no box convention
        ({"points": FIVE_POINTS, "boxes": RETINAFACE_BOXES}, TypeError),  # no kind
    ],
)
def test_a_detector_must_declare_its_points_boxes_and_kind(declare, error):
    with pytest.raises(error):
        type("Undeclared", (FaceDetector,), {**declare, "__call__": lambda self, f: []})


@pytest.mark.parametrize("kind", ["retinaface", "test_reordered"])
def test_a_kind_taken_by_another_class_and_an_unknown_kind_are_refused(kind):
    other = type("Other", (ReorderedRetina,), {"kind": kind})
    with pytest.raises(ValueError, match="already"):
        register_detector(other)
    cfg = load_config(None, ["faces.detector.kind=no_such_detector"]).faces.detector
    with pytest.raises(ValueError, match=f"known: .*{kind}"):
        build_detector(cfg)
