"""Drawing primitives, the 3-D projector and the face parts (cv2, sub-pixel, anti-aliased).

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from training.synth.identity import (
    Expression,
    Identity,
    Pose,
    blink_amount,
    expression_geometry,
    head_pose,
)
from training.synth.motion import _SCALE, _SHIFT


def _bbox(pts: np.ndarray, shape: tuple[int, int], pad: int) -> tuple[int, int, int, int] | None:
    x0 = max(int(math.floor(pts[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + pad + 1, shape[1])
    y1 = min(int(math.ceil(pts[:, 1].max())) + pad + 1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _mask(
    pts: np.ndarray, box: tuple[int, int, int, int], blur: float = 0.0, stroke: float = 0.0
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a polygon (or a polyline of width `stroke` px)."""
    x0, y0, x1, y1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    p = np.round((pts - [x0, y0]) * _SCALE).astype(np.int32)[None]
    if stroke > 0:
        cv2.polylines(m, p, False, 255, max(1, int(round(stroke))), cv2.LINE_AA, _SHIFT)
    else:
        cv2.fillPoly(m, p, 255, cv2.LINE_AA, _SHIFT)
    out = m.astype(np.float32) * (1.0 / 255.0)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    return out


def _paint(
    canvas: np.ndarray,
    pts: np.ndarray,
    color: Sequence[float] | np.ndarray,
    alpha: float = 1.0,
    blur: float = 0.0,
    stroke: float = 0.0,
    clip: np.ndarray | None = None,
) -> None:
    """Alpha-blend `color` (RGB, or an [h, w, 3] field over the shape's bbox) into `canvas`.

    `clip` is an optional full-canvas coverage mask multiplied in (e.g. to keep teeth inside
    the mouth).
    """
    pad = int(math.ceil(3 * blur + stroke)) + 2
    box = _bbox(pts, canvas.shape[:2], pad)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = _mask(pts, box, blur, stroke) * alpha
    if clip is not None:
        m *= clip[y0:y1, x0:x1]
    region = canvas[y0:y1, x0:x1]
    col = np.asarray(color, np.float32)
    region += m[:, :, None] * (col - region)


def _shadow(canvas: np.ndarray, pts: np.ndarray, strength: float, blur: float) -> None:
    """Darken by `strength` (0..1) inside a soft polygon: multiplicative, keeps the hue."""
    pad = int(math.ceil(3 * blur)) + 2
    box = _bbox(pts, canvas.shape[:2], pad)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = _mask(pts, box, blur) * strength
    canvas[y0:y1, x0:x1] *= (1.0 - m)[:, :, None]


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


# ---------------------------------------------------------------------------------------------
# Face geometry in face-local units
# ---------------------------------------------------------------------------------------------


class _Projector:
    """Face-local (x, y[, z]) -> pixel coordinates for one face in one frame."""

    def __init__(self, ident: Identity, pose: Pose, cx: float, cy: float, s: float) -> None:
        self.a = ident.face_width
        self.depth = 0.75
        self.s = s
        self.cx = cx + pose.tx * s
        self.cy = cy + pose.ty * s
        y, p, r = (math.radians(v) for v in (pose.yaw, pose.pitch, pose.roll))
        ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        self.rot = rz @ rx @ ry
        self.roll = r

    def surface_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        q = 1.0 - (x / self.a) ** 2 - y**2
        return self.depth * np.sqrt(np.clip(q, 0.05, 1.0))

    def __call__(self, pts: np.ndarray, dz: float | np.ndarray = 0.0) -> np.ndarray:
        """[N, 2] local points on the face surface (raised by dz) -> [N, 2] pixels."""
        x, y = pts[:, 0], pts[:, 1]
        z = self.surface_z(x, y) + dz
        p3 = self.rot @ np.stack([x, y, z])
        return np.stack([self.cx + self.s * p3[0], self.cy + self.s * p3[1]], 1)

    def flat(self, pts: np.ndarray) -> np.ndarray:
        """Silhouette-like points (outline, hair): roll, scale and translate only."""
        c, sn = math.cos(self.roll), math.sin(self.roll)
        x, y = pts[:, 0], pts[:, 1]
        return np.stack(
            [self.cx + self.s * (c * x - sn * y), self.cy + self.s * (sn * x + c * y)], 1
        )

    def to_local(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `flat` for pixel grids."""
        c, sn = math.cos(self.roll), math.sin(self.roll)
        dx, dy = (px - self.cx) / self.s, (py - self.cy) / self.s
        return c * dx + sn * dy, -sn * dx + c * dy


def _face_outline(ident: Identity, n: int = 72) -> np.ndarray:
    """Egg-shaped outline: ellipse of half-width `face_width`, narrowed towards the chin."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = ident.face_width * np.sin(a)
    y = -np.cos(a)
    lower = np.clip(y, 0, 1)
    x = x * (1 - (0.18 + 0.22 * ident.jaw_taper) * lower**2)
    return np.stack([x, y], 1)


def _face_halfwidth(ident: Identity, y: np.ndarray) -> np.ndarray:
    """Half-width of the outline at height y (matches `_face_outline`)."""
    base = ident.face_width * np.sqrt(np.clip(1 - y**2, 0, 1))
    lower = np.clip(y, 0, 1)
    return base * (1 - (0.18 + 0.22 * ident.jaw_taper) * lower**2)


# ---------------------------------------------------------------------------------------------
# Background and body (static per identity and cell size: cached)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _static_layer(ident: Identity, h: int, w: int) -> np.ndarray:
    """Background + shoulders for one cell, float32 RGB [h, w, 3]."""
    rng = np.random.default_rng([ident.seed, 3])
    c0 = np.array(ident.background[0], np.float32)
    c1 = np.array(ident.background[1], np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = (np.cos(ang) * xx / w + np.sin(ang) * yy / h + 1.0) / 2.0
    canvas = c0 + (c1 - c0) * np.clip(g, 0, 1)[:, :, None]
    # a few soft blobs/panels: a room-like, out-of-focus backdrop
    for _ in range(int(rng.integers(2, 6))):
        col = np.clip(c0 + rng.normal(0, 40, 3), 0, 255)
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 0.8) * h
            pts = np.array([[x0, y0], [x0 + rng.uniform(0.1, 0.4) * w, y0],
                            [x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.2, 0.6) * h],
                            [x0, y0 + rng.uniform(0.2, 0.6) * h]])  # fmt: skip
        else:
            pts = _ellipse_pts(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.2) * w,
                               rng.uniform(0.05, 0.2) * h)  # fmt: skip
        _paint(canvas, pts, col, alpha=float(rng.uniform(0.3, 0.7)), blur=0.01 * w + 1)
    return canvas


# ---------------------------------------------------------------------------------------------
# The face
# ---------------------------------------------------------------------------------------------


def _skin_field(
    proj: _Projector, ident: Identity, pose: Pose, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Lambert + ambient shaded skin colour over a pixel box, [h, w, 3] float32."""
    x0, y0, x1, y1 = box
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    x, y = proj.to_local(px, py)
    a = ident.face_width
    q = np.clip(1 - (x / a) ** 2 - y**2, 0.0, 1.0)
    z = np.sqrt(q) * proj.depth
    n = np.stack([x / a**2, y, z / proj.depth**2 + 0.15])
    n /= np.linalg.norm(n, axis=0, keepdims=True) + 1e-6
    rot = proj.rot
    nr = np.tensordot(rot, n, axes=1)
    lam = np.clip(np.tensordot(np.asarray(ident.light, np.float32), nr, axes=1), 0, 1)
    shade = 0.42 + 0.62 * lam
    spec = 0.10 * lam**12
    skin = np.asarray(ident.skin, np.float32)
    return skin * shade[:, :, None] + 255.0 * spec[:, :, None]


def _draw_hair_back(canvas: np.ndarray, proj: _Projector, ident: Identity) -> None:
    if ident.hair_style != 1:
        return
    a = ident.face_width
    ang = np.linspace(0, np.pi, 24)
    top = np.stack([np.cos(ang) * a * 1.18, -0.1 - np.sin(ang) * 1.05], 1)
    low = np.array([[-a * 1.22, 0.5], [-a * 1.3, 1.2], [-a * 1.1, 1.38], [a * 1.1, 1.38],
                    [a * 1.3, 1.2], [a * 1.22, 0.5]])  # fmt: skip
    _paint(canvas, proj.flat(np.concatenate([top, low])), np.asarray(ident.hair) * 0.75, blur=0.6)


def _draw_body(canvas: np.ndarray, ident: Identity) -> None:
    """Shoulders (static: the head moves, the torso does not) with a collar, shaded by the light."""
    h, w = canvas.shape[:2]
    s = min(ident.scale * h, 0.36 * w)  # as in _projector
    cx = ident.center[0] * w
    top = ident.center[1] * h + 1.3 * s
    half = 1.55 * s
    pts = np.array([[cx - 0.6 * s, top], [cx + 0.6 * s, top], [cx + half * 0.92, top + 0.25 * s],
                    [cx + half, top + 0.55 * s], [cx + half * 1.15, h + 5],
                    [cx - half * 1.15, h + 5], [cx - half, top + 0.55 * s],
                    [cx - half * 0.92, top + 0.25 * s]])  # fmt: skip
    shirt = np.array(ident.shirt, np.float32)
    box = _bbox(pts, (h, w), 2)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = _mask(pts, box)
    u = (np.arange(x0, x1, dtype=np.float32) - cx) / half
    shade = np.clip(0.78 + 0.25 * ident.light[0] * u - 0.12 * u**2, 0.4, 1.1)
    field = shirt * shade[None, :, None]
    region = canvas[y0:y1, x0:x1]
    region += m[:, :, None] * (field - region)
    skin = np.asarray(ident.skin, np.float32)
    neck_v = np.array([[cx - 0.36 * s, top], [cx, top + 0.42 * s], [cx + 0.36 * s, top]])
    _paint(canvas, neck_v, skin * 0.62)
    _paint(canvas, neck_v, shirt * 0.55, stroke=max(1.5, 0.06 * s))


def _draw_neck_and_ears(canvas: np.ndarray, proj: _Projector, ident: Identity) -> None:
    skin = np.asarray(ident.skin, np.float32)
    nw = 0.34 * ident.face_width / 0.74
    neck = np.array([[-nw, 0.4], [nw, 0.4], [nw * 1.08, 1.45], [-nw * 1.08, 1.45]])
    _paint(canvas, proj.flat(neck), skin * 0.68)
    a = ident.face_width
    for side in (-1, 1):
        ear = _ellipse_pts(side * a * 0.98, 0.0, 0.09, 0.17, 24)
        _paint(canvas, proj.flat(ear), skin * 0.8)
        _paint(canvas, proj.flat(_ellipse_pts(side * a * 1.0, 0.0, 0.04, 0.1, 16)), skin * 0.6,
               alpha=0.6, blur=0.6)  # fmt: skip


def _draw_skin(canvas: np.ndarray, proj: _Projector, ident: Identity, pose: Pose) -> np.ndarray:
    """Shaded face; returns the face coverage mask (full canvas, float32) for clipping."""
    outline = proj.flat(_face_outline(ident))
    box = _bbox(outline, canvas.shape[:2], 2)
    full = np.zeros(canvas.shape[:2], np.float32)
    if box is None:
        return full
    x0, y0, x1, y1 = box
    m = _mask(outline, box)
    field = _skin_field(proj, ident, pose, box)
    region = canvas[y0:y1, x0:x1]
    region += m[:, :, None] * (field - region)
    full[y0:y1, x0:x1] = m
    # chin shadow on the neck
    chin = np.array([[-0.35, 0.85], [0.35, 0.85], [0.3, 1.15], [-0.3, 1.15]])
    _shadow(canvas, proj.flat(chin), 0.25, 0.06 * proj.s)
    return full


def _draw_hair_top(canvas: np.ndarray, proj: _Projector, ident: Identity) -> None:
    rng = np.random.default_rng([ident.seed, 5])
    a = ident.face_width
    hl = ident.hairline
    n = 25
    xs = np.linspace(-1, 1, n)
    if ident.hair_style == 3:  # side fringe: low on one side
        side = 1 if rng.random() < 0.5 else -1
        edge = hl + 0.12 * (side * xs + 1) / 2 + 0.02 * np.sin(9 * xs)
    else:
        edge = hl + 0.03 * np.sin(7 * xs + rng.uniform(0, 6)) - 0.05 * xs**2
    # Cap = skull arc (over the top, left to right), then down-in to the right temple, up the
    # face edge, along the fringe right to left, and down the left face edge: never crosses.
    fx = xs * _face_halfwidth(ident, edge) * 0.995
    front = np.stack([fx, edge], 1)[::-1]
    puff = 1.0 if ident.hair_style == 2 else 1.1
    ang = np.linspace(np.pi, 0, 31)
    over = np.stack([np.cos(ang) * a * puff, -0.05 - np.sin(ang) * (1.0 + 0.05 * puff)], 1)
    ys = np.linspace(-0.05, edge[-1], 8)
    right = np.stack([_face_halfwidth(ident, ys) * 0.995, ys], 1)
    ys = np.linspace(edge[0], -0.05, 8)
    left = np.stack([-_face_halfwidth(ident, ys) * 0.995, ys], 1)
    pts = np.concatenate([over, right, front, left])
    hair = np.asarray(ident.hair, np.float32)
    if ident.hair_style == 2:  # buzz cut: skin shows through
        hair = 0.6 * hair + 0.4 * np.asarray(ident.skin, np.float32)
    alpha = 1.0
    outline = proj.flat(pts)
    box = _bbox(outline, canvas.shape[:2], 2)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = _mask(outline, box) * alpha
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    x, y = proj.to_local(px, py)
    lam = np.clip(0.5 + 0.5 * (ident.light[0] * x / a - ident.light[1] * (-y)), 0, 1)
    field = hair * (0.65 + 0.55 * lam)[:, :, None]
    region = canvas[y0:y1, x0:x1]
    region += m[:, :, None] * (field - region)
    # a few strands for texture
    hw = float(_face_halfwidth(ident, np.array(hl)))
    for _ in range(14):
        x0s = rng.uniform(-0.85, 0.85) * hw
        strand = np.array([[x0s * 0.3, -1.05], [x0s * 0.8, -0.8], [x0s, hl + 0.05]])
        _paint(canvas, proj.flat(strand), hair * 0.6, alpha=0.5 * alpha, stroke=0.012 * proj.s)
    # shadow cast by the fringe on the forehead
    band = np.stack([fx, edge + 0.02], 1)
    band = np.concatenate([band, (band + [0, 0.07])[::-1]])
    _shadow(canvas, proj(band), 0.25, 0.02 * proj.s)


def _draw_eye(
    canvas: np.ndarray, proj: _Projector, ident: Identity, ex: Expression, side: int, blink: float
) -> None:
    cx = side * ident.eye_spacing
    cy = -0.12
    w = ident.eye_size
    h = w * 0.52
    openness = max(0.0, ex.eye_open * (1.0 - blink))
    t = np.linspace(-1, 1, 21)
    xs = cx + w * t
    skew = 0.12 * side * t  # outer corner slightly higher
    upper = cy - h * openness * (1 - t**2) ** 0.8 - h * 0.08 * skew
    lower = cy + h * 0.62 * (1 - ex.lower_lid) * (1 - t**2) ** 0.9 - h * 0.08 * skew
    lower = np.maximum(lower, upper + 1e-3)
    eye = np.concatenate([np.stack([xs, upper], 1), np.stack([xs, lower], 1)[::-1]])
    skin = np.asarray(ident.skin, np.float32)
    # socket shadow and brow-bone shading (geometry constant: independent of affect)
    sock = _ellipse_pts(cx, cy - 0.02, w * 1.35, h * 1.7, 32)
    _shadow(canvas, proj(sock, dz=-0.02), 0.18, 0.05 * proj.s)
    eye_px = proj(eye, dz=0.0)
    box = _bbox(eye_px, canvas.shape[:2], 3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    em = _mask(eye_px, box)
    region = canvas[y0:y1, x0:x1]
    white = np.array([236, 232, 226], np.float32) * 0.92
    layer = np.empty_like(region)
    layer[:] = white
    # iris and pupil (looking roughly at the camera), clipped by the eye mask
    ic = proj(np.array([[cx, cy]]), dz=0.01)[0] - [x0, y0]
    r_iris = h * 1.05 * proj.s
    iris_mask = np.zeros(em.shape, np.uint8)
    c = (int(round(ic[0] * _SCALE)), int(round(ic[1] * _SCALE)))
    cv2.circle(iris_mask, c, int(round(r_iris * _SCALE)), 255, -1, cv2.LINE_AA, _SHIFT)
    im = iris_mask.astype(np.float32) / 255.0
    layer += im[:, :, None] * (np.asarray(ident.iris, np.float32) - layer)
    pupil = np.zeros(em.shape, np.uint8)
    cv2.circle(pupil, c, int(round(r_iris * 0.45 * _SCALE)), 255, -1, cv2.LINE_AA, _SHIFT)
    pm = pupil.astype(np.float32) / 255.0
    layer += pm[:, :, None] * (np.array([12, 10, 10], np.float32) - layer)
    hl = np.zeros(em.shape, np.uint8)
    hc = (c[0] - int(r_iris * 0.35 * _SCALE), c[1] - int(r_iris * 0.35 * _SCALE))
    cv2.circle(hl, hc, int(round(max(r_iris * 0.18, 0.8) * _SCALE)), 255, -1, cv2.LINE_AA, _SHIFT)
    layer += (hl.astype(np.float32) / 255.0)[:, :, None] * (255.0 - layer) * 0.8
    # shadow of the upper lid on the eyeball
    top_shadow = np.clip(
        1.0 - (np.arange(em.shape[0])[:, None] - (ic[1] - r_iris)) / (r_iris), 0, 1
    )
    layer *= (1 - 0.25 * top_shadow)[:, :, None]
    region += em[:, :, None] * (layer - region)
    # upper lid line with lashes, lower lid line, crease
    up_px = proj(np.stack([xs, upper], 1))
    _paint(canvas, up_px, (30, 22, 20), alpha=0.95, stroke=max(1.5, 0.022 * proj.s))
    lo_px = proj(np.stack([xs, lower], 1))
    _paint(canvas, lo_px, skin * 0.55, alpha=0.6, stroke=max(1.0, 0.01 * proj.s))
    crease = np.stack([xs * 0.95 + cx * 0.05, upper - h * 0.45 - 0.012], 1)[3:-3]
    _paint(canvas, proj(crease), skin * 0.6, alpha=0.55, stroke=max(1.0, 0.012 * proj.s), blur=0.5)


def _draw_brow(
    canvas: np.ndarray, proj: _Projector, ident: Identity, ex: Expression, side: int
) -> None:
    t = np.linspace(0, 1, 16)  # 0 = inner end, 1 = outer end
    inner_x = 0.10 - ex.brow_knit
    outer_x = ident.eye_spacing + ident.eye_size * 1.25
    xs = side * (inner_x + (outer_x - inner_x) * t)
    base = -0.12 - ident.eye_size * 0.52 * 1.9 - 0.05
    ys = base - ex.brow_raise - 0.05 * np.sin(np.pi * np.clip(t * 1.1, 0, 1)) ** 1.2
    ys = ys - ex.brow_inner * (1 - t) ** 1.5
    th = ident.brow_thickness * (1.25 - 0.6 * t)
    upper = np.stack([xs, ys - th / 2], 1)
    lower = np.stack([xs, ys + th / 2], 1)
    pts = np.concatenate([upper, lower[::-1]])
    # always clearly darker than the skin, so brow motion reads on every skin/hair pairing
    color = np.minimum(np.asarray(ident.hair, np.float32) * 0.7, np.asarray(ident.skin) * 0.45)
    _paint(canvas, proj(pts, dz=0.02), color, alpha=0.92, blur=0.35)


def _draw_nose(canvas: np.ndarray, proj: _Projector, ident: Identity) -> None:
    L, W = ident.nose_length, ident.nose_width
    lx = ident.light[0]
    side = -1 if lx > 0 else 1  # shadow on the side away from the light
    ridge = side * np.array(
        [[0.035, 0], [0.05, 0], [W * 0.9, 0], [W * 0.4, 0], [0.02, 0], [0.015, 0]]
    )
    ridge[:, 1] = [-0.05, L * 0.6, L + 0.02, L + 0.05, L * 0.7, -0.05]
    _shadow(canvas, proj(ridge, dz=0.03), 0.28, 0.025 * proj.s)
    # under-nose shadow
    under = _ellipse_pts(0.0, L + 0.06, W * 0.9, 0.03, 24)
    _shadow(canvas, proj(under, dz=0.05), 0.3, 0.015 * proj.s)
    # tip highlight
    tip = _ellipse_pts(-lx * 0.01, L - 0.03, W * 0.4, 0.035, 20)
    _paint(canvas, proj(tip, dz=0.12), (255, 250, 245), alpha=0.12, blur=0.02 * proj.s)
    # alae and nostrils
    skin = np.asarray(ident.skin, np.float32)
    for s_ in (-1, 1):
        ala = np.array([[s_ * W * 0.55, L - 0.04], [s_ * W * 1.05, L + 0.01],
                        [s_ * W * 0.85, L + 0.05], [s_ * W * 0.45, L + 0.055]])  # fmt: skip
        _paint(canvas, proj(ala, dz=0.08), skin * 0.6, alpha=0.7, stroke=max(1.0, 0.012 * proj.s))
        nostril = _ellipse_pts(s_ * W * 0.45, L + 0.035, W * 0.28, 0.018, 16)
        _paint(canvas, proj(nostril, dz=0.08), (45, 28, 25), alpha=0.85, blur=0.4)


def _mouth_curves(ident: Identity, ex: Expression) -> dict[str, np.ndarray]:
    """Lip contours in face-local units, each [N, 2] from the left corner to the right."""
    n = 31
    t = np.linspace(-1, 1, n)
    mw = ident.mouth_width * ex.mouth_width
    x = mw * t
    base = ident.mouth_y - ex.mouth_curve * t**2  # corners lift with valence
    gap = ex.mouth_open
    env = 1 - t**2
    inner_up = base - gap * 0.35 * env
    inner_lo = base + gap * 0.65 * env
    lt = ident.lip_thickness
    cupid = 1 - 0.35 * np.exp(-((t / 0.18) ** 2))  # dip at the centre of the upper lip
    outer_up = inner_up - lt * 0.85 * np.sqrt(np.clip(env, 0, 1)) * cupid - 0.004
    outer_lo = inner_lo + lt * 1.15 * np.sqrt(np.clip(env, 0, 1)) + 0.004
    return {
        "inner_up": np.stack([x, inner_up], 1),
        "inner_lo": np.stack([x, inner_lo], 1),
        "outer_up": np.stack([x, outer_up], 1),
        "outer_lo": np.stack([x, outer_lo], 1),
    }


def _draw_mouth(canvas: np.ndarray, proj: _Projector, ident: Identity, ex: Expression) -> None:
    c = _mouth_curves(ident, ex)
    skin = np.asarray(ident.skin, np.float32)
    lip = skin * np.array([0.82, 0.55, 0.55], np.float32) + np.array([20, 0, 5], np.float32)
    dz = 0.04
    # nasolabial folds: from the nose wings towards the (moving) mouth corners
    for side in (0, -1):
        corner = c["outer_up"][side]
        sgn = -1 if side == 0 else 1
        fold = np.array([[sgn * ident.nose_width * 1.1, ident.nose_length + 0.02],
                         [corner[0] + sgn * 0.05, (ident.nose_length + corner[1]) / 2],
                         [corner[0] + sgn * 0.04, corner[1] + 0.03]])  # fmt: skip
        _paint(canvas, proj(fold), skin * 0.72, alpha=0.5, stroke=max(1.0, 0.012 * proj.s),
               blur=0.02 * proj.s)  # fmt: skip
    # shadow under the lower lip (chin dimple)
    lo = c["outer_lo"]
    under = np.concatenate([lo[8:-8], (lo[8:-8] + [0, 0.05])[::-1]])
    _shadow(canvas, proj(under, dz=dz), 0.22, 0.02 * proj.s)
    # mouth interior and teeth
    interior = np.concatenate([c["inner_up"], c["inner_lo"][::-1]])
    inner_px = proj(interior, dz=dz)
    if ex.mouth_open > 0.012:
        _paint(canvas, inner_px, (58, 18, 24))
        box = _bbox(inner_px, canvas.shape[:2], 2)
        if box is not None:
            clip = np.zeros(canvas.shape[:2], np.float32)
            x0, y0, x1, y1 = box
            clip[y0:y1, x0:x1] = _mask(inner_px, box)
            teeth_h = min(0.45 * ex.mouth_open, 0.045)
            teeth = np.concatenate(
                [c["inner_up"] * [0.8, 1], (c["inner_up"] * [0.8, 1] + [0, teeth_h])[::-1]]
            )
            _paint(canvas, proj(teeth, dz=dz), (232, 228, 218), clip=clip)
    else:
        _paint(canvas, proj(c["inner_up"], dz=dz), lip * 0.45, stroke=max(1.0, 0.01 * proj.s))
    # lips, slightly shaded: upper lip darker (faces down), lower lip lighter
    upper = np.concatenate([c["outer_up"], c["inner_up"][::-1]])
    lower = np.concatenate([c["inner_lo"], c["outer_lo"][::-1]])
    _paint(canvas, proj(upper, dz=dz), lip * 0.85, blur=0.4)
    _paint(canvas, proj(lower, dz=dz), lip * 1.05, blur=0.4)
    hl = np.concatenate(
        [c["outer_lo"][10:-10] + [0, -0.015], (c["outer_lo"][10:-10] + [0, -0.03])[::-1]]
    )
    _paint(canvas, proj(hl, dz=dz), (255, 240, 235), alpha=0.15, blur=0.01 * proj.s)
    # corners
    for k in (0, -1):
        p = proj(c["inner_up"][[k]], dz=dz)[0]
        _paint(canvas, _ellipse_pts(p[0], p[1], 0.01 * proj.s, 0.01 * proj.s, 12), lip * 0.4,
               alpha=0.6, blur=0.5)  # fmt: skip


def _projector(ident: Identity, pose: Pose, h: int, w: int) -> _Projector:
    """Place the face in an h x w cell: size from the cell height, capped by its width."""
    s = min(ident.scale * h, 0.36 * w)
    return _Projector(ident, pose, ident.center[0] * w, ident.center[1] * h, s)


def _draw_face(
    canvas: np.ndarray,
    ident: Identity,
    ex: Expression,
    pose: Pose,
    blink: float,
) -> None:
    proj = _projector(ident, pose, *canvas.shape[:2])
    _draw_hair_back(canvas, proj, ident)
    _draw_neck_and_ears(canvas, proj, ident)
    _draw_body(canvas, ident)
    _draw_skin(canvas, proj, ident, pose)
    _draw_hair_top(canvas, proj, ident)
    _draw_nose(canvas, proj, ident)
    for side in (-1, 1):
        _draw_eye(canvas, proj, ident, ex, side, blink)
        _draw_brow(canvas, proj, ident, ex, side)
    _draw_mouth(canvas, proj, ident, ex)


# ---------------------------------------------------------------------------------------------
# Public rendering API
# ---------------------------------------------------------------------------------------------


def render_cell(
    identity: Identity,
    arousal: float,
    valence: float,
    t_s: float,
    size: tuple[int, int],
    *,
    speech_open: float = 0.0,
    speech_round: float = 0.0,
    motion_seed: int = 0,
    blinks: bool = True,
) -> np.ndarray:
    """One face on its own background, float32 RGB [H, W, 3] in 0..255 (no noise)."""
    h, w = size
    canvas = _static_layer(identity, h, w).copy()
    ex = expression_geometry(arousal, valence, speech_open, speech_round)
    pose = head_pose(identity, t_s, motion_seed)
    blink = blink_amount(identity, t_s, motion_seed) if blinks else 0.0
    _draw_face(canvas, identity, ex, pose, blink)
    return canvas
