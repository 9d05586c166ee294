"""Pure geometry: similarity fit, crop square, interpolation, smoothing, IoU."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.faces.align import (
    box_iou,
    centred_average,
    crop_square,
    interpolate_at,
    template_points,
)
from tests.geometry_reference import apply_affine, crop_matrix, similarity_transform


def rot(theta: float, s: float, t: tuple[float, float]) -> np.ndarray:
    c, si = np.cos(theta), np.sin(theta)
    return np.array([[s * c, -s * si, t[0]], [s * si, s * c, t[1]]])


def test_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    m = rot(0.3, 1.7, (12.0, -4.0))
    dst = apply_affine(m, src)
    np.testing.assert_allclose(similarity_transform(src, dst), m, atol=1e-9)


def test_similarity_never_reflects():
    src = np.array([[0, 0], [1, 0], [0, 1.0]])
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_crop_square_is_square_and_scaled():
    mean_face = np.array([[10.0, 20.0], [110.0, 40.0], [60.0, 200.0]])
    x0, y0, side = crop_square(mean_face, 1.3)
    assert side == pytest.approx(180 * 1.3)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((60.0, 110.0))
    m = crop_matrix(np.hstack([np.eye(2), np.zeros((2, 1))]), (x0, y0, side), 96)
    np.testing.assert_allclose(
        apply_affine(m, np.array([[x0, y0], [x0 + side, y0 + side]])), [[0, 0], [96, 96]], atol=1e-9
    )


def test_template_points_retina5_order():
    mf = np.zeros((68, 2))
    mf[36:42] = [10, 50]
    mf[42:48] = [90, 50]
    mf[30] = [50, 80]
    mf[48], mf[54] = [30, 110], [70, 110]
    np.testing.assert_allclose(
        template_points(mf, "retina5", ()), [[10, 50], [90, 50], [50, 80], [30, 110], [70, 110]]
    )
    np.testing.assert_allclose(template_points(mf, "fan68", (30, 48)), [[50, 80], [30, 110]])


def test_interpolate_fills_gaps_and_pads_ends():
    known = np.array([2, 6])
    vals = np.array([[0.0, 10.0], [4.0, 30.0]])
    out = interpolate_at(known, vals, np.arange(0, 9))
    np.testing.assert_allclose(out[:, 0], [0, 0, 0, 1, 2, 3, 4, 4, 4])
    np.testing.assert_allclose(out[4], [2.0, 20.0])


def test_centred_average_shrinks_at_track_ends():
    frames = np.arange(10, 30)
    vals = frames.astype(float)[:, None] ** 2
    out = centred_average(frames, vals, np.array([10, 11, 20, 29]), 6, first=10, last=29)
    assert out[0, 0] == 100  # h = 0 at the first frame
    assert out[1, 0] == pytest.approx((100 + 121 + 144) / 3)  # h = 1
    assert out[2, 0] == pytest.approx(np.mean(np.arange(14, 27) ** 2))  # full 13-frame window
    assert out[3, 0] == 29**2
    # An open track (last = inf) never shrinks on the right.
    out_open = centred_average(frames, vals, np.array([20]), 6, first=10, last=np.inf)
    assert out_open[0, 0] == out[2, 0]
    with pytest.raises(ValueError):
        centred_average(frames, vals, np.array([28]), 6, first=10, last=np.inf)


def test_box_iou():
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[0, 0, 10, 10.0], [5, 0, 15, 10.0], [20, 20, 30, 30.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
