"""Name points of the valence/arousal plane with the circumplex words of METHOD.md."""

from __future__ import annotations

import numpy as np

from schemas.config import EmotionConfig

NEUTRAL = "Neutral"


def emotion_words(
    arousal: np.ndarray, valence: np.ndarray, cfg: EmotionConfig | None = None
) -> np.ndarray:
    """Word of the nearest angle for each point ([N] arrays in [-1, 1] -> [N] object array of
    str); 'Neutral' where the radius is below `neutral_radius`. Valence is x, arousal y."""
    cfg = cfg or EmotionConfig()
    names = np.array(list(cfg.angles), dtype=object)
    angles = np.deg2rad(np.array(list(cfg.angles.values()), dtype=np.float64))
    a = np.asarray(arousal, np.float64)
    v = np.asarray(valence, np.float64)
    theta = np.arctan2(a, v)
    # Angular distance on the circle, [N, words].
    diff = np.abs(np.angle(np.exp(1j * (theta[:, None] - angles[None, :]))))
    words = names[np.argmin(diff, axis=1)]
    radius = np.hypot(a, v)
    return np.where((radius < cfg.neutral_radius) | ~np.isfinite(radius), NEUTRAL, words)
