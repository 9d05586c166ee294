"""Frames and videos: face cells laid out in a frame, 5 reference points, noise, video.

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np

from training.synth.drawing import _mouth_curves, _projector, render_cell
from training.synth.identity import Identity, expression_geometry, head_pose


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
