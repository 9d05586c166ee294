"""Who is drawn and how they move: identities, expression geometry, head pose, blinks.

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
