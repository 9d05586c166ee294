"""The float64 numpy reference of the face crop, independent of the batched device path in
pipeline/faces/warp.py that the product runs: Umeyama's SVD similarity, the template square to
crop map, and cv2.warpAffine. Tests check the device path (and the alignment) against it."""

from __future__ import annotations

import cv2
import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    src [P, 2] onto dst [P, 2] (Umeyama 1991). Returns the [2, 3] affine matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_s = (s**2).sum() / len(src)
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def crop_matrix(align: np.ndarray, square: tuple[float, float, float], size: int) -> np.ndarray:
    """Compose image->template `align` [2, 3] with template square -> [0, size) crop."""
    x0, y0, side = square
    k = size / side
    c = np.array([[k, 0.0, -x0 * k], [0.0, k, -y0 * k], [0.0, 0.0, 1.0]])
    a = np.vstack([align, [0.0, 0.0, 1.0]])
    return (c @ a)[:2]


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points [..., 2] through a [2, 3] affine."""
    return pts @ m[:, :2].T + m[:, 2]


def warp_crop(gray: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Crop [size, size] uint8 from a gray image [H, W] through the [2, 3] image->crop map."""
    return cv2.warpAffine(
        gray, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
