"""Blend window outputs of one track into per-frame values, then rows at the output rate.

`TrackAccumulator` takes (frame_index [n], arousal [n], valence [n], per-frame metadata) of each
window in any order and keeps weighted sums per frame; `timeline_rows` resamples to `output_hz`
(linear interpolation of the blended values at t = k / output_hz within the track's span;
the metadata - box, score, the interpolated flag: the per-frame columns declared `written` in
schemas/stage_columns.py - from the nearest analysis frame); `timeline_table` makes them the
TIMELINES rows of one track.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.emotion import emotion_words
from pipeline.windows import blend_weights
from schemas.config import EmotionConfig
from schemas.stage_columns import TIMELINE_FRAME_COLUMNS
from schemas.tables import TIMELINES, conform

# The blended columns; every other per-frame column is metadata, carried from one frame.
BLENDED = ("frame_index", "arousal", "valence")


class TrackAccumulator:
    """Weighted sums of overlapping window outputs for one track, keyed by frame index."""

    def __init__(self) -> None:
        self.sum_a: dict[int, float] = {}
        self.sum_v: dict[int, float] = {}
        self.weight: dict[int, float] = {}
        self.names: tuple[str, ...] = ()  # metadata columns, in the order first given
        self.meta: dict[int, tuple[Any, ...]] = {}  # frame -> its metadata values

    def add(
        self,
        frame_index: np.ndarray,
        arousal: np.ndarray,
        valence: np.ndarray,
        meta: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """One window's valid frames: frame_index [n], arousal/valence [n], and per-frame
        metadata columns {name: [n, ...]} (e.g. box_xyxy [n, 4]), kept from the first window
        that holds each frame."""
        meta = meta or {}
        self.names = self.names or tuple(meta)
        cols = [meta[k] for k in self.names]
        w = blend_weights(len(frame_index))
        for i, f in enumerate(frame_index.tolist()):
            self.sum_a[f] = self.sum_a.get(f, 0.0) + w[i] * float(arousal[i])
            self.sum_v[f] = self.sum_v.get(f, 0.0) + w[i] * float(valence[i])
            self.weight[f] = self.weight.get(f, 0.0) + w[i]
            if f not in self.meta:
                self.meta[f] = tuple(c[i] for c in cols)

    def per_frame(self) -> dict[str, np.ndarray]:
        """Blended per-frame columns and the metadata columns, sorted by frame index."""
        frames = np.array(sorted(self.weight), dtype=np.int64)
        wsum = np.array([self.weight[f] for f in frames])
        out = {
            "frame_index": frames,
            "arousal": np.array([self.sum_a[f] for f in frames]) / wsum,
            "valence": np.array([self.sum_v[f] for f in frames]) / wsum,
        }
        for j, name in enumerate(self.names if len(frames) else ()):
            out[name] = np.stack([self.meta[f][j] for f in frames])
        return out


def timeline_rows(
    per_frame: dict[str, np.ndarray],
    fps: float,
    output_hz: float | None,
    emotion: EmotionConfig | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame blended columns -> timeline columns at `output_hz` (None: every frame).

    Times are seconds from the video's first frame; values are clipped to [-1, 1]; every
    metadata column of `per_frame` is taken from the nearest analysis frame.
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
        **{k: col[nearest] for k, col in per_frame.items() if k not in BLENDED},
    }


def timeline_table(
    rows: dict[str, np.ndarray], video_id: str, uri: str, track_id: int, model_id: str,
    untrained: bool,
) -> pa.Table:  # fmt: skip
    """One track's `timeline_rows` -> its TIMELINES rows (every declared per-frame column)."""
    n = len(rows["time_s"])
    cols: dict[str, Any] = {
        "video_id": [video_id] * n,
        "uri": [uri] * n,
        "track_id": np.full(n, track_id, np.int32),
        **{k: rows[k] for k in ("time_s", "frame_index", "arousal", "valence")},
        "emotion": rows["emotion"].astype(str),
    }
    for c in TIMELINE_FRAME_COLUMNS:
        cols[c.name] = _arrow(rows[c.name], TIMELINES.field(c.name).type)
    cols["model_id"] = [model_id] * n
    cols["untrained"] = np.full(n, untrained)
    return conform(pa.table(cols), TIMELINES)


def _arrow(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A per-frame column [n, ...] as an arrow array of `type_` (fixed-size lists for the
    trailing dimensions)."""
    if pa.types.is_fixed_size_list(type_):
        flat = values.reshape(len(values) * type_.list_size, *values.shape[2:])
        return pa.FixedSizeListArray.from_arrays(_arrow(flat, type_.value_type), type_.list_size)
    return pa.array(values).cast(type_)
