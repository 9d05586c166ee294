"""Blend window outputs of one track into per-frame values, then rows at the output rate.

`TrackAccumulator` takes (frame_index [n], arousal [n], valence [n], per-frame metadata) of each
window in any order and keeps weighted sums per frame; `timeline_rows` resamples to `output_hz`
(linear interpolation of the blended values at t = k / output_hz within the track's span;
box, score and the interpolated flag from the nearest analysis frame).
"""

from __future__ import annotations

import numpy as np

from pipeline.emotion import emotion_words
from pipeline.windows import blend_weights
from schemas.config import EmotionConfig


class TrackAccumulator:
    """Weighted sums of overlapping window outputs for one track, keyed by frame index."""

    def __init__(self) -> None:
        self.sum_a: dict[int, float] = {}
        self.sum_v: dict[int, float] = {}
        self.weight: dict[int, float] = {}
        self.meta: dict[int, tuple[np.ndarray, float, bool]] = {}

    def add(
        self,
        frame_index: np.ndarray,
        arousal: np.ndarray,
        valence: np.ndarray,
        box: np.ndarray,
        det_score: np.ndarray,
        interpolated: np.ndarray,
    ) -> None:
        """One window's valid frames: frame_index [n], arousal/valence [n], box [n, 4]..."""
        w = blend_weights(len(frame_index))
        for i, f in enumerate(frame_index.tolist()):
            self.sum_a[f] = self.sum_a.get(f, 0.0) + w[i] * float(arousal[i])
            self.sum_v[f] = self.sum_v.get(f, 0.0) + w[i] * float(valence[i])
            self.weight[f] = self.weight.get(f, 0.0) + w[i]
            if f not in self.meta:
                self.meta[f] = (box[i], float(det_score[i]), bool(interpolated[i]))

    def per_frame(self) -> dict[str, np.ndarray]:
        """Blended per-frame columns, sorted by frame index."""
        frames = np.array(sorted(self.weight), dtype=np.int64)
        wsum = np.array([self.weight[f] for f in frames])
        return {
            "frame_index": frames,
            "arousal": np.array([self.sum_a[f] for f in frames]) / wsum,
            "valence": np.array([self.sum_v[f] for f in frames]) / wsum,
            "box_xyxy": np.stack([self.meta[f][0] for f in frames]).astype(np.float32),
            "det_score": np.array([self.meta[f][1] for f in frames], np.float32),
            "interpolated": np.array([self.meta[f][2] for f in frames], bool),
        }


def timeline_rows(
    per_frame: dict[str, np.ndarray],
    fps: float,
    output_hz: float | None,
    emotion: EmotionConfig | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame blended columns -> timeline columns at `output_hz` (None: every frame).

    Times are seconds from the video's first frame; values are clipped to [-1, 1].
    """
    frames = per_frame["frame_index"]
    t_frames = frames / fps
    if output_hz is None or len(frames) == 0:
        times = t_frames.astype(np.float64)
        nearest = np.arange(len(frames))
        a, v = per_frame["arousal"], per_frame["valence"]
    else:
        k0 = int(np.ceil(t_frames[0] * output_hz - 1e-9))
        k1 = int(np.floor(t_frames[-1] * output_hz + 1e-9))
        times = np.arange(k0, k1 + 1) / output_hz
        if len(times) == 0:  # a track shorter than one output step: keep its middle frame
            times = t_frames[len(t_frames) // 2 : len(t_frames) // 2 + 1]
        a = np.interp(times, t_frames, per_frame["arousal"])
        v = np.interp(times, t_frames, per_frame["valence"])
        nearest = np.clip(np.searchsorted(t_frames, times - 0.5 / fps), 0, len(frames) - 1)
    a = np.clip(a, -1, 1).astype(np.float32)
    v = np.clip(v, -1, 1).astype(np.float32)
    return {
        "time_s": times.astype(np.float64),
        "frame_index": np.rint(times * fps).astype(np.int32),
        "arousal": a,
        "valence": v,
        "emotion": emotion_words(a, v, emotion),
        "box_xyxy": per_frame["box_xyxy"][nearest],
        "det_score": per_frame["det_score"][nearest],
        "interpolated": per_frame["interpolated"][nearest],
    }
