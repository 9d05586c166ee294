"""Smooth arousal/valence trajectories and the renderer's shared constants.

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

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
