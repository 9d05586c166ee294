"""The synthetic affect generator: rendered talking faces with known arousal/valence.

Why: the real affect corpora (SEWA, RECOLA, ...) are licence-gated, so tests, the demo and CI
need media whose ground truth is known exactly. A face is drawn with OpenCV (anti-aliased
polygons, Lambert-shaded skin, eyes with whites/iris/pupil, lips, hair, neck and shoulders) so
the real RetinaFace detector finds it; its *expression* follows smooth arousal/valence
trajectories and is carried only by face geometry:

=================  =====================================================================
arousal  (+)       eyes wider, brows raised, jaw dropped (mouth open)
arousal  (-)       heavy upper lids, brows relaxed, mouth closed
valence  (+)       mouth corners up and mouth wider, lower lids raised (smile squint)
valence  (-)       mouth corners down and narrower; brows: inner ends raised when calm (sad),
                   lowered and knitted when aroused (angry)
=================  =====================================================================

Brightness, colours, lighting and background never depend on arousal/valence (a test checks
that the mean gray level at extreme expressions barely moves), so a model must read the face.
Nuisance factors vary instead: identity (face shape, skin tone, eye spacing/size, nose, lips,
hair style/colour, clothing), head pose (slow yaw/pitch/roll/translation jitter), lighting
direction, background, blinks, sensor noise, and optionally speech-like mouth motion with a
matching voiced audio track (mouth opening drives the loudness and the first formant; lip
rounding drives the second), so pretext tasks that predict audio from video have signal.

Everything is deterministic from integer seeds (numpy ``SeedSequence``).

Coordinates: a face is drawn in face-local units (x right, y down, origin the face centre,
1 unit = half the face height from chin to hairline), projected through a small 3-D rotation
(points lie on an ellipsoid) and placed in pixels. Frames are uint8 RGB [H, W, 3].
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

AUDIO_RATE = 16000
"""Sample rate (Hz) of synthetic audio tracks."""

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = float(1 << _SHIFT)

# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def _smooth_signal(t: np.ndarray, rng: np.random.Generator, fmin: float, fmax: float) -> np.ndarray:
    """Sum of 5 sinusoids with random frequencies in [fmin, fmax] Hz; unit variance on average."""
    k = 5
    freqs = rng.uniform(fmin, fmax, k)
    phases = rng.uniform(0.0, 2 * np.pi, k)
    amps = rng.uniform(0.5, 1.0, k)
    amps /= np.sqrt(np.sum(amps**2) / 2.0)  # mean power of sum of sines = sum(a^2)/2 -> 1
    return np.sum(
        amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None]), 0
    )


def sample_trajectory(
    n_frames: int, fps: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth arousal and valence, float32 [n_frames] each, in (-1, 1).

    Each is ``tanh(offset + 0.9 * s(t))`` where s is a unit-variance sum of sinusoids of
    0.02-0.15 Hz (periods of 7-50 s: a change every few seconds, like continuous annotations)
    and the offset (uniform in [-0.6, 0.6]) gives each clip its own mood. A 30 s clip usually
    spans most of [-0.95, 0.95] (over 300 seeds, 80 % reach below -0.8, 85 % above 0.8); the
    largest per-frame step at 25 fps is ~0.04 typically, < 0.08 always. Arousal and valence
    are independent, so every quadrant of the circumplex occurs.
    """
    t = np.arange(n_frames, dtype=np.float64) / float(fps)
    out = []
    for _ in range(2):
        offset = rng.uniform(-0.6, 0.6)
        out.append(np.tanh(offset + 0.9 * _smooth_signal(t, rng, 0.02, 0.15)).astype(np.float32))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------

_SKIN = np.array(
    [[250, 222, 200], [238, 196, 168], [222, 170, 135], [196, 138, 102], [160, 106, 74],
     [124, 82, 56], [92, 60, 42]], dtype=np.float64,
)  # fmt: skip
_HAIR = np.array(
    [[22, 18, 16], [52, 36, 26], [96, 66, 42], [190, 158, 100], [132, 62, 30], [150, 148, 144]],
    dtype=np.float64,
)
_IRIS = np.array(
    [[92, 60, 36], [52, 32, 22], [78, 116, 156], [86, 116, 78], [118, 96, 58]], dtype=np.float64
)


@dataclass(frozen=True)
class Identity:
    """Everything about a synthetic person that stays fixed across their videos.

    Lengths are in face-local units (half the face height); colours are RGB 0..255.
    """

    seed: int
    face_width: float  # half-width / half-height of the face ellipse (0.68..0.80)
    jaw_taper: float  # 0 = round jaw, 1 = narrow pointed chin
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 buzz, 3 side fringe
    hairline: float  # y of the hairline (-0.62..-0.48)
    iris: tuple[float, float, float]
    eye_spacing: float  # x of each eye centre (0.27..0.33)
    eye_size: float  # eye half-width (0.11..0.135)
    brow_thickness: float  # 0.028..0.045
    nose_length: float  # y of the nose tip (0.20..0.28)
    nose_width: float  # 0.08..0.11
    mouth_y: float  # 0.50..0.56
    mouth_width: float  # neutral half-width 0.19..0.24
    lip_thickness: float  # 0.035..0.055
    shirt: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    light: tuple[float, float, float]  # unit vector towards the light (x right, y down, z viewer)
    scale: float  # face half-height as a fraction of the cell height (0.22..0.29)
    center: tuple[float, float]  # face centre as fractions of the cell (x, y)
    yaw0: float  # mean head pose, degrees
    roll0: float
    pitch0: float
    voice_f0: float  # fundamental frequency of the voice, Hz

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return dataclasses.asdict(self)


def _rgb(a: np.ndarray) -> tuple[float, float, float]:
    return (float(a[0]), float(a[1]), float(a[2]))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity. Deterministic given the generator state."""
    skin_t = rng.uniform(0, len(_SKIN) - 1)
    i = int(skin_t)
    j = min(i + 1, len(_SKIN) - 1)
    skin = _SKIN[i] + (skin_t - i) * (_SKIN[j] - _SKIN[i])
    skin = np.clip(skin * rng.uniform(0.94, 1.04) + rng.normal(0, 4, 3), 30, 255)
    hair = np.clip(_HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15), 5, 250)
    iris = _IRIS[rng.integers(len(_IRIS))]
    shirt = rng.uniform(20, 230, 3)
    bg_a = rng.uniform(30, 225, 3)
    bg_b = np.clip(bg_a + rng.normal(0, 45, 3), 10, 245)
    az = rng.uniform(-0.7, 0.7)  # light azimuth (radians), mostly from the front
    el = rng.uniform(-0.6, 0.1)  # elevation; negative = from above (y is down)
    light = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    light /= np.linalg.norm(light)
    return Identity(
        seed=int(rng.integers(0, 2**31 - 1)),
        face_width=float(rng.uniform(0.68, 0.80)),
        jaw_taper=float(rng.uniform(0.0, 1.0)),
        skin=_rgb(skin),
        hair=_rgb(hair),
        hair_style=int(rng.integers(0, 4)),
        hairline=float(rng.uniform(-0.62, -0.48)),
        iris=_rgb(iris),
        eye_spacing=float(rng.uniform(0.27, 0.33)),
        eye_size=float(rng.uniform(0.11, 0.135)),
        brow_thickness=float(rng.uniform(0.028, 0.045)),
        nose_length=float(rng.uniform(0.20, 0.28)),
        nose_width=float(rng.uniform(0.08, 0.11)),
        mouth_y=float(rng.uniform(0.50, 0.56)),
        mouth_width=float(rng.uniform(0.19, 0.24)),
        lip_thickness=float(rng.uniform(0.035, 0.055)),
        shirt=_rgb(shirt),
        background=(_rgb(bg_a), _rgb(bg_b)),
        light=_rgb(light),
        scale=float(rng.uniform(0.22, 0.29)),
        center=(float(rng.uniform(0.42, 0.58)), float(rng.uniform(0.44, 0.50))),
        yaw0=float(rng.uniform(-10, 10)),
        roll0=float(rng.uniform(-5, 5)),
        pitch0=float(rng.uniform(-5, 5)),
        voice_f0=float(rng.uniform(95, 230)),
    )


# ---------------------------------------------------------------------------------------------
# Expression and pose: pure functions of (arousal, valence) and of time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """Face geometry driven by affect (face-local units; see the module table)."""

    eye_open: float  # upper-lid opening as a fraction of the identity's eye height
    lower_lid: float  # lower-lid raise, fraction of the eye height
    brow_raise: float  # whole-brow lift (up positive)
    brow_inner: float  # extra lift of the inner brow ends (negative = lowered, frown)
    brow_knit: float  # inner brow ends pulled towards the midline
    mouth_curve: float  # corner lift relative to the mouth centre (up positive)
    mouth_width: float  # multiplier of the identity's mouth half-width
    mouth_open: float  # lip gap at the centre


def expression_geometry(
    arousal: float, valence: float, speech_open: float = 0.0, speech_round: float = 0.0
) -> Expression:
    """Map affect (and optional speech articulation, both in [0, 1]) to face geometry.

    Continuous (piecewise-linear in the quadrant terms) so smooth trajectories give smooth
    motion. Speech adds lip opening and rounding (narrower mouth) on top of the affect pose.
    """
    a = float(np.clip(arousal, -1, 1))
    v = float(np.clip(valence, -1, 1))
    neg = max(0.0, -v)
    return Expression(
        eye_open=0.72 + 0.30 * a,
        lower_lid=0.28 * max(0.0, v),
        brow_raise=0.045 * a,
        brow_inner=0.045 * neg * (1 - a) / 2 - 0.05 * neg * (1 + a) / 2,
        brow_knit=0.035 * neg * (1 + a) / 2,
        mouth_curve=0.07 * v,
        mouth_width=(1 + 0.16 * v) * (1 - 0.18 * speech_round),
        mouth_open=0.008 + 0.05 * (a + 1) / 2 + 0.11 * speech_open,
    )


@dataclass(frozen=True)
class Pose:
    """Head pose: rotations in degrees, translation in face-local units."""

    yaw: float
    pitch: float
    roll: float
    tx: float
    ty: float


def head_pose(identity: Identity, t_s: float, motion_seed: int = 0) -> Pose:
    """Slow head motion around the identity's mean pose (±6° yaw, ±4° pitch/roll, ±0.04 shift).

    A fixed set of low-frequency sinusoids per (identity, motion_seed): deterministic in time,
    independent of affect.
    """
    rng = np.random.default_rng([identity.seed, motion_seed, 7])
    f = rng.uniform(0.05, 0.4, (5, 2))
    ph = rng.uniform(0, 2 * np.pi, (5, 2))
    w = np.sum(np.sin(2 * np.pi * f * t_s + ph), axis=1) / math.sqrt(2.0)  # [5], ~unit scale
    return Pose(
        yaw=identity.yaw0 + 6.0 * float(np.tanh(w[0] / 1.5)),
        pitch=identity.pitch0 + 4.0 * float(np.tanh(w[1] / 1.5)),
        roll=identity.roll0 + 4.0 * float(np.tanh(w[2] / 1.5)),
        tx=0.04 * float(np.tanh(w[3] / 1.5)),
        ty=0.03 * float(np.tanh(w[4] / 1.5)),
    )


def blink_amount(identity: Identity, t_s: float, motion_seed: int = 0) -> float:
    """Eyelid closure in [0, 1] from blinks every 2.5-6 s lasting ~0.2 s (not affect-related)."""
    rng = np.random.default_rng([identity.seed, motion_seed, 11])
    period = rng.uniform(2.5, 6.0)
    phase = rng.uniform(0, period)
    k = math.floor((t_s + phase) / period)
    jitter = np.random.default_rng([identity.seed, motion_seed, 13, k]).uniform(0, period - 0.3)
    d = (t_s + phase) - k * period - jitter
    if 0.0 <= d <= 0.2:
        return float(math.sin(math.pi * d / 0.2) ** 2)
    return 0.0


# ---------------------------------------------------------------------------------------------
# Drawing helpers (float32 RGB canvases, anti-aliased masks drawn in the shape's bbox only)
# ---------------------------------------------------------------------------------------------


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


def landmarks5(
    identity: Identity | Sequence[Identity],
    arousal: float | Sequence[float],
    valence: float | Sequence[float],
    t_s: float,
    size: tuple[int, int] = (360, 640),
    *,
    speech_open: float | Sequence[float] = 0.0,
    speech_round: float | Sequence[float] = 0.0,
    motion_seed: int = 0,
) -> np.ndarray:
    """True 5 points per face in frame pixels, float32 [n_faces, 5, 2] as (x, y).

    RetinaFace's order: eye centres (image-left, image-right), nose tip, mouth corners
    (image-left, image-right). Same arguments as `render_frame`, so tests of the face
    pipeline can score detected landmarks against the truth.
    """
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    n = len(ids)
    aro = np.broadcast_to(np.asarray(arousal, np.float64), (n,))
    val = np.broadcast_to(np.asarray(valence, np.float64), (n,))
    so = np.broadcast_to(np.asarray(speech_open, np.float64), (n,))
    sr = np.broadcast_to(np.asarray(speech_round, np.float64), (n,))
    h, w = size
    out = np.zeros((n, 5, 2), np.float32)
    for i, (x0, x1) in enumerate(_cells(w, n)):
        ident = ids[i]
        ex = expression_geometry(aro[i], val[i], so[i], sr[i])
        pose = head_pose(ident, t_s, motion_seed + 1000 * i)
        proj = _projector(ident, pose, h, x1 - x0)
        mouth = _mouth_curves(ident, ex)["inner_up"][[0, -1]]
        local = np.array(
            [[-ident.eye_spacing, -0.12], [ident.eye_spacing, -0.12],
             [0.0, ident.nose_length - 0.02], mouth[0], mouth[1]]
        )  # fmt: skip
        dz = np.array([0.01, 0.01, 0.12, 0.04, 0.04])
        out[i] = proj(local, dz=dz) + [x0, 0]
    return out


def _cells(width: int, n: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, width, n + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(n)]


@functools.lru_cache(maxsize=4)
def _noise_bank(n: int) -> np.ndarray:
    """Unit Gaussian samples, float32 [n + 2**16]: per-frame noise is a random slice of it.

    Drawing fresh normals per frame costs ~7 ms at 640x360 (half the render time); a slice at a
    random offset looks the same to a detector or a network and is still seed-deterministic.
    """
    return np.random.default_rng(12345).standard_normal(n + (1 << 16), dtype=np.float32)


def _finish(canvas: np.ndarray, rng: np.random.Generator | None, noise: float) -> np.ndarray:
    """Add sensor noise (std `noise` gray levels) and quantise to uint8."""
    if rng is not None and noise > 0:
        bank = _noise_bank(canvas.size)
        off = int(rng.integers(0, 1 << 16))
        canvas = canvas + noise * bank[off : off + canvas.size].reshape(canvas.shape)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def render_frame(
    identity: Identity | Sequence[Identity],
    arousal: float | Sequence[float],
    valence: float | Sequence[float],
    t_s: float,
    size: tuple[int, int] = (360, 640),
    rng: np.random.Generator | None = None,
    *,
    speech_open: float | Sequence[float] = 0.0,
    speech_round: float | Sequence[float] = 0.0,
    motion_seed: int = 0,
    noise: float = 2.0,
    blinks: bool = True,
) -> np.ndarray:
    """Render one frame, uint8 RGB [H, W, 3].

    Several identities (with one arousal/valence/speech value each) are drawn side by side,
    left to right, each in an equal-width cell with its own background: face index i is the
    i-th cell from the left. `t_s` (seconds) drives head motion and blinks; `rng` adds
    Gaussian sensor noise of std `noise` gray levels (None: no noise).
    """
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    n = len(ids)
    aro = np.broadcast_to(np.asarray(arousal, np.float64), (n,))
    val = np.broadcast_to(np.asarray(valence, np.float64), (n,))
    so = np.broadcast_to(np.asarray(speech_open, np.float64), (n,))
    sr = np.broadcast_to(np.asarray(speech_round, np.float64), (n,))
    h, w = size
    canvas = np.empty((h, w, 3), np.float32)
    for i, (x0, x1) in enumerate(_cells(w, n)):
        canvas[:, x0:x1] = render_cell(
            ids[i], aro[i], val[i], t_s, (h, x1 - x0), speech_open=so[i], speech_round=sr[i],
            motion_seed=motion_seed + 1000 * i, blinks=blinks,
        )  # fmt: skip
    return _finish(canvas, rng, noise)


def render_video(
    identity: Identity | Sequence[Identity],
    arousal: np.ndarray,
    valence: np.ndarray,
    fps: float,
    size: tuple[int, int] = (360, 640),
    *,
    seed: int = 0,
    speech_open: np.ndarray | None = None,
    speech_round: np.ndarray | None = None,
    noise: float = 2.0,
) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames [H, W, 3], one per trajectory sample (frame i at t = i / fps).

    arousal/valence: [T] for one identity, [n_faces, T] for several. `seed` fixes head motion
    and sensor noise. speech_open/speech_round: optional per-frame articulation, same shape.
    """
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    aro = np.atleast_2d(np.asarray(arousal, np.float64))
    val = np.atleast_2d(np.asarray(valence, np.float64))
    if aro.shape != val.shape or aro.shape[0] != len(ids):
        raise ValueError(f"need [n_faces={len(ids)}, T] trajectories, got {aro.shape}, {val.shape}")
    so = np.zeros_like(aro) if speech_open is None else np.atleast_2d(speech_open)
    sr = np.zeros_like(aro) if speech_round is None else np.atleast_2d(speech_round)
    rng = np.random.default_rng([seed, 17])
    for i in range(aro.shape[1]):
        yield render_frame(
            ids, aro[:, i], val[:, i], i / fps, size, rng, speech_open=so[:, i],
            speech_round=sr[:, i], motion_seed=seed, noise=noise,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Speech: articulation + a matching voiced audio track
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    """Articulation at the audio rate: `open` (lip opening) and `round` (lip rounding), [N]."""

    open: np.ndarray
    round: np.ndarray
    rate: int


def sample_speech(seconds: float, rng: np.random.Generator, rate: int = AUDIO_RATE) -> Speech:
    """Syllables (0.12-0.3 s raised-cosine bumps) grouped into words and phrases with pauses.

    Roughly 4-5 syllables/s while talking, with 0.15-0.8 s pauses, like conversational speech.
    """
    n = int(round(seconds * rate))
    env = np.zeros(n, np.float32)
    rnd = np.zeros(n, np.float32)
    t = rng.uniform(0.0, 0.6)
    while t < seconds:
        for _ in range(int(rng.integers(1, 8))):  # a word/phrase of syllables
            dur = rng.uniform(0.12, 0.3)
            a, b = int(t * rate), min(int((t + dur) * rate), n)
            if a >= n:
                break
            k = np.arange(b - a) / max(b - a, 1)
            bump = np.sin(np.pi * k) ** 2
            env[a:b] = np.maximum(env[a:b], rng.uniform(0.45, 1.0) * bump)
            rnd[a:b] = np.maximum(rnd[a:b], rng.uniform(0.0, 1.0) * bump)
            t += dur * rng.uniform(0.9, 1.1)
        t += rng.uniform(0.15, 0.8)
    return Speech(open=env, round=rnd, rate=rate)


def speech_at_frames(speech: Speech, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean articulation over each video frame's interval: (open [T], round [T])."""
    edges = (np.arange(n_frames + 1) / fps * speech.rate).round().astype(int)
    edges = np.clip(edges, 0, len(speech.open))
    cs_o = np.concatenate([[0.0], np.cumsum(speech.open, dtype=np.float64)])
    cs_r = np.concatenate([[0.0], np.cumsum(speech.round, dtype=np.float64)])
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    return (
        ((cs_o[edges[1:]] - cs_o[edges[:-1]]) / cnt).astype(np.float32),
        ((cs_r[edges[1:]] - cs_r[edges[:-1]]) / cnt).astype(np.float32),
    )


def synthesize_voice(
    speech: Speech,
    f0: float,
    rng: np.random.Generator,
    arousal: np.ndarray | None = None,
    fps: float = 25.0,
) -> np.ndarray:
    """A voiced, vowel-like signal whose loudness and spectrum follow the articulation.

    Harmonics of f0 (raised up to 15 % by arousal, with slow jitter) shaped by two formant
    peaks: F1 rises with lip opening (300-800 Hz), F2 falls with rounding (2200-900 Hz);
    amplitude = opening. Returns float32 [N] in [-1, 1] at `speech.rate` Hz.
    """
    n = len(speech.open)
    rate = speech.rate
    t = np.arange(n) / rate
    f0_t = f0 * (1 + 0.04 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    if arousal is not None and len(arousal):
        frame_t = np.arange(len(arousal)) / fps
        f0_t = f0_t * (1 + 0.075 * (np.interp(t, frame_t, arousal) + 1))
    phase = 2 * np.pi * np.cumsum(f0_t) / rate
    f1 = 300 + 500 * speech.open
    f2 = 2200 - 1300 * speech.round
    sig = np.zeros(n, np.float64)
    for k in range(1, int(3800 // f0) + 1):
        fk = k * f0_t
        gain = (
            np.exp(-(((fk - f1) / 160) ** 2))
            + 0.6 * np.exp(-(((fk - f2) / 220) ** 2))
            + 0.25 / k
        )  # fmt: skip
        sig += gain * np.sin(k * phase)
    sig *= speech.open
    sig += rng.normal(0, 0.01, n) * (0.2 + speech.open)  # breath noise
    peak = np.max(np.abs(sig)) + 1e-9
    return (0.6 * sig / peak).astype(np.float32)


def render_clip(
    identity: Identity | Sequence[Identity],
    arousal: np.ndarray,
    valence: np.ndarray,
    fps: float,
    size: tuple[int, int] = (360, 640),
    *,
    seed: int = 0,
    speech: bool = True,
    audio_rate: int = AUDIO_RATE,
    noise: float = 2.0,
) -> tuple[Iterator[np.ndarray], np.ndarray | None]:
    """Frames (lazy iterator of uint8 RGB [H, W, 3]) and a matching mono audio track.

    With `speech`, every face talks (its own syllable stream and voice) and the audio is the
    mix of their voices, float32 [round(T / fps * audio_rate)] in [-1, 1]; otherwise audio is
    None and the mouths move with affect only.
    """
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    aro = np.atleast_2d(np.asarray(arousal, np.float32))
    val = np.atleast_2d(np.asarray(valence, np.float32))
    n_frames = aro.shape[1]
    if not speech:
        return render_video(ids, aro, val, fps, size, seed=seed, noise=noise), None
    seconds = n_frames / fps
    opens, rounds, audio = [], [], None
    for i, ident in enumerate(ids):
        rng = np.random.default_rng([seed, 23, i])
        sp = sample_speech(seconds, rng, audio_rate)
        o, r = speech_at_frames(sp, n_frames, fps)
        opens.append(o)
        rounds.append(r)
        voice = synthesize_voice(sp, ident.voice_f0, rng, aro[i], fps)
        audio = voice if audio is None else audio + voice
    assert audio is not None
    audio = (audio / max(1.0, float(np.max(np.abs(audio))))).astype(np.float32)
    frames = render_video(
        ids, aro, val, fps, size, seed=seed, speech_open=np.stack(opens),
        speech_round=np.stack(rounds), noise=noise,
    )  # fmt: skip
    return frames, audio


# ---------------------------------------------------------------------------------------------
# Files: videos, labels, corpus
# ---------------------------------------------------------------------------------------------

LABEL_COLUMNS = ("video", "time_s", "arousal", "valence")
"""Generic CSV label format (the `generic` dataset reader); `face` is added for n_faces > 1."""


def label_rows(
    video: str, arousal: np.ndarray, valence: np.ndarray, fps: float
) -> Iterator[dict[str, Any]]:
    """One row per frame (and per face when the trajectories are [n_faces, T]).

    Columns: video, time_s (frame i at i / fps seconds), arousal, valence and, for several
    faces, `face` = left-to-right index of the face in the frame (0 = leftmost).
    """
    aro = np.atleast_2d(arousal)
    val = np.atleast_2d(valence)
    multi = np.ndim(arousal) == 2 and aro.shape[0] > 1
    for i in range(aro.shape[1]):
        for f in range(aro.shape[0]):
            row: dict[str, Any] = {
                "video": video,
                "time_s": round(i / fps, 6),
                "arousal": round(float(aro[f, i]), 6),
                "valence": round(float(val[f, i]), 6),
            }
            if multi:
                row["face"] = f
            yield row


def write_labels_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows in the generic CSV format ``video,time_s,arousal,valence[,face]``.

    The header comes from the first row's keys (in LABEL_COLUMNS order, then `face`).
    Returns the number of rows written.
    """
    it = iter(rows)
    first = next(it, None)
    cols = list(LABEL_COLUMNS)
    if first is not None and "face" in first:
        cols.append("face")
    n = 0
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        wr.writeheader()
        if first is not None:
            wr.writerow(first)
            n = 1
            for row in it:
                wr.writerow(row)
                n += 1
    return n


def write_synthetic_video(
    path: str | os.PathLike,
    seed: int,
    seconds: float,
    fps: float = 25,
    size: tuple[int, int] = (360, 640),
    n_faces: int = 1,
    with_audio: bool = False,
    *,
    identities: Sequence[Identity] | None = None,
    labels_csv: str | os.PathLike | None = None,
    video_name: str | None = None,
    lossless: bool = False,
    noise: float = 2.0,
) -> dict[str, Any]:
    """Render and encode one synthetic video; return its ground truth.

    Identities default to ``sample_identity`` draws from `seed` (pass `identities` to reuse a
    person across videos). With `with_audio` the faces talk and an AAC track is written.
    Returns a dict: path, seed, fps, n_frames, size, n_faces, identities (dicts), time_s [T],
    arousal / valence (float32 [T] for one face, [n_faces, T] for several, face 0 leftmost),
    audio_rate (None without audio). With `labels_csv`, also writes the generic label CSV
    (`video` column = `video_name`, default the file name).
    """
    from pipeline.encode import write_video

    root = np.random.SeedSequence([seed, 101])
    id_seq, traj_seq = root.spawn(2)
    if identities is None:
        identities = [sample_identity(np.random.default_rng(s)) for s in id_seq.spawn(n_faces)]
    identities = list(identities)
    n_faces = len(identities)
    n_frames = max(1, int(round(seconds * fps)))
    trajs = [
        sample_trajectory(n_frames, fps, np.random.default_rng(s)) for s in traj_seq.spawn(n_faces)
    ]
    aro = np.stack([a for a, _ in trajs])
    val = np.stack([v for _, v in trajs])
    frames, audio = render_clip(
        identities, aro, val, fps, size, seed=seed, speech=with_audio, noise=noise
    )
    write_video(path, frames, fps, lossless=lossless, audio=audio, audio_rate=AUDIO_RATE)
    out_a = aro[0] if n_faces == 1 else aro
    out_v = val[0] if n_faces == 1 else val
    name = video_name or Path(os.fspath(path)).name
    if labels_csv is not None:
        write_labels_csv(labels_csv, label_rows(name, out_a, out_v, fps))
    return {
        "path": os.fspath(path),
        "video": name,
        "seed": seed,
        "fps": fps,
        "n_frames": n_frames,
        "size": tuple(size),
        "n_faces": n_faces,
        "identities": [i.to_dict() for i in identities],
        "time_s": np.arange(n_frames) / fps,
        "arousal": out_a,
        "valence": out_v,
        "audio_rate": AUDIO_RATE if with_audio else None,
    }


def split_identities(
    n_identities: int, fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """Assign each identity index a split name (train/validation/test); no identity is shared.

    Counts are the rounded fractions, with at least one identity per split whose fraction is
    positive (when there are enough identities); the remainder goes to train.
    """
    names = ("train", "validation", "test")
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers, got {fractions}")
    fr = fr / fr.sum()
    counts = np.floor(fr * n_identities + 0.5).astype(int)
    for k in (1, 2):
        if fr[k] > 0 and counts[k] == 0 and n_identities >= 3:
            counts[k] = 1
    counts[0] = n_identities - counts[1] - counts[2]
    if counts[0] < 0:
        raise ValueError(f"cannot split {n_identities} identities as {fractions}")
    labels = [names[k] for k in range(3) for _ in range(counts[k])]
    order = rng.permutation(n_identities)
    out = [""] * n_identities
    for pos, idx in enumerate(order):
        out[idx] = labels[pos]
    return out


MANIFEST_COLUMNS = (
    "video",
    "identity",
    "split",
    "seed",
    "seconds",
    "fps",
    "n_frames",
    "n_faces",
    "has_audio",
)


def _corpus_video(job: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one corpus video (a top-level function so process pools can pickle it)."""
    info = write_synthetic_video(
        job["path"], job["seed"], job["seconds"], job["fps"], job["size"], 1, job["with_audio"],
        identities=[job["identity"]], video_name=job["video"], lossless=job["lossless"],
    )  # fmt: skip
    return info["arousal"], info["valence"], info["n_frames"]


def make_corpus(
    out_dir: str | os.PathLike,
    n_identities: int,
    videos_per_identity: int,
    seconds: float,
    seed: int,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    *,
    fps: float = 25,
    size: tuple[int, int] = (360, 640),
    with_audio: bool = True,
    lossless: bool = False,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Write a synthetic corpus and return its manifest (one dict per video, in file order).

    Layout under `out_dir` (a local folder, or any fsspec URI: written to a local temporary
    folder, then uploaded)::

        videos/id{III}_v{K}.mp4   one talking face per video (AAC audio with `with_audio`)
        labels.csv                generic CSV, `video` = path relative to out_dir, one row per
                                  frame at the video rate
        manifest.csv              video, identity, split, seed, seconds, fps, n_frames, ...
        identities.json           the Identity parameters per identity id

    Identities (not videos) are split train/validation/test, so evaluation is on unseen
    people. Deterministic from `seed` (also with `workers` > 1 processes). Cost: about 8 ms
    per 640x360 frame on one core, render + encode.
    """
    if isinstance(out_dir, str) and "://" in out_dir and not out_dir.startswith("file://"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vaerr_corpus_") as tmp:
            manifest = make_corpus(
                tmp, n_identities, videos_per_identity, seconds, seed, split_fractions, fps=fps,
                size=size, with_audio=with_audio, lossless=lossless, workers=workers,
            )  # fmt: skip
            _upload_tree(tmp, out_dir)
        return manifest
    out = Path(str(out_dir).removeprefix("file://"))
    (out / "videos").mkdir(parents=True, exist_ok=True)
    id_seqs = np.random.SeedSequence([seed, 202]).spawn(n_identities)
    splits = split_identities(n_identities, split_fractions, np.random.default_rng([seed, 303]))
    idents = [sample_identity(np.random.default_rng(q)) for q in id_seqs]
    jobs, manifest = [], []
    for i, ident in enumerate(idents):
        for k in range(videos_per_identity):
            rel = f"videos/id{i:03d}_v{k}.mp4"
            vseed = int(np.random.SeedSequence([seed, 404, i, k]).generate_state(1)[0] >> 1)
            jobs.append({
                "path": str(out / rel), "video": rel, "seed": vseed, "seconds": seconds,
                "fps": fps, "size": tuple(size), "with_audio": with_audio, "identity": ident,
                "lossless": lossless,
            })  # fmt: skip
            manifest.append({
                "video": rel, "identity": f"id{i:03d}", "split": splits[i], "seed": vseed,
                "seconds": seconds, "fps": fps, "n_frames": 0, "n_faces": 1,
                "has_audio": bool(with_audio),
            })  # fmt: skip
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_corpus_video, jobs))
    else:
        results = [_corpus_video(j) for j in jobs]
    all_rows: list[dict[str, Any]] = []
    for row, (aro, val, n_frames) in zip(manifest, results):
        row["n_frames"] = n_frames
        all_rows.extend(label_rows(row["video"], aro, val, fps))
    write_labels_csv(out / "labels.csv", all_rows)
    with open(out / "manifest.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        wr.writeheader()
        wr.writerows(manifest)
    info = {
        "seed": seed,
        "split_fractions": list(split_fractions),
        "identities": {f"id{i:03d}": ident.to_dict() for i, ident in enumerate(idents)},
    }
    with open(out / "identities.json", "w") as f:
        json.dump(info, f, indent=1)
    return manifest


def _upload_tree(local_dir: str, uri: str) -> None:
    """Copy every file under `local_dir` to the fsspec folder `uri`, keeping relative paths."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            fs.makedirs(f"{root.rstrip('/')}/{Path(rel).parent.as_posix()}", exist_ok=True)
            fs.put_file(str(path), f"{root.rstrip('/')}/{rel}")
