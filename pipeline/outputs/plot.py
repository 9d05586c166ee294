"""Arousal and valence of one video over time, one panel per face track, as a PNG.

Each panel: arousal (red) and valence (blue) in [-1, 1] against seconds; happy episodes shaded
green and spikes red (from an EVENTS table, only on the faces they involve; a spike shorter than
a readable width is widened to it and marked with a triangle at its start); along the top, a
strip coloured by the emotion word (the most frequent word of each 1/240 of the time axis; hue =
the word's angle on the circumplex, so neighbours on the circle get neighbouring colours, grey
for Neutral) with the word written on every stretch long enough to hold it. Matplotlib's object
API on the Agg canvas: no pyplot state, no display.

Every text is drawn as plain text: names, ids and words come from a job's tables (a file
named `$\\foo$.mp4` is a file name, not TeX), so mathtext and usetex are off for the whole
figure (`PLAIN_TEXT`, also passed to each text call).
"""

from __future__ import annotations

import colorsys
import io
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pipeline.emotion import NEUTRAL, emotion_words
from pipeline.storage import atomic_write
from schemas.config import EmotionConfig, StorageConfig

AROUSAL_COLOR = "#d62728"
VALENCE_COLOR = "#1f77b4"
EVENT_COLORS = {"happy": "#2ca02c", "spike": "#d62728"}
WIDTH_IN, PANEL_IN, HEADER_IN, DPI = 12.0, 2.2, 1.0, 100
STRIP_BINS = 240  # word strip resolution: 5 px per bin on a 12 in, 100 dpi figure
PLAIN_TEXT = {"parse_math": False, "usetex": False}
"""Text keyword arguments: the string is drawn as given (no `$...$` mathtext, no TeX)."""
PLAIN_RC = {"text.parse_math": False, "text.usetex": False}
"""The same for every text matplotlib makes itself (labels, legend) while a figure is built."""


def figure_size_px(n_tracks: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for `n_tracks` panels."""
    h = HEADER_IN + PANEL_IN * max(n_tracks, 1)
    return int(round(WIDTH_IN * dpi)), int(round(h * dpi))


def word_color(word: str, emotion: EmotionConfig) -> tuple[float, float, float]:
    """RGB in [0, 1]: hue from the word's circumplex angle, grey for Neutral/unknown words."""
    angle = emotion.angles.get(word)
    if angle is None:
        return (0.85, 0.85, 0.85)
    return colorsys.hsv_to_rgb((angle % 360) / 360.0, 0.45, 0.95)


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False)


def _panel(
    ax: Any,
    t: np.ndarray,
    a: np.ndarray,
    v: np.ndarray,
    words: np.ndarray,
    spans: list[tuple[str, float, float]],
    t_range: tuple[float, float],
    emotion: EmotionConfig,
) -> None:
    """One track: episodes, curves, the word strip (axes: x seconds, y value)."""
    x0, x1 = t_range
    min_w = 0.004 * (x1 - x0)
    for kind, s, e in spans:
        color = EVENT_COLORS.get(kind, "#7f7f7f")
        if e - s < min_w:
            s, e = s - (min_w - (e - s)) / 2, e + (min_w - (e - s)) / 2
        ax.axvspan(s, e, color=color, alpha=0.22, lw=0)
        if kind == "spike":
            ax.plot([s], [-0.98], marker="^", color=color, ms=7, clip_on=False)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.plot(t, a, color=AROUSAL_COLOR, lw=1.4, label="arousal")
    ax.plot(t, v, color=VALENCE_COLOR, lw=1.4, label="valence")
    ax.set_xlim(x0, x1)
    ax.set_ylim(-1.05, 1.3)
    ax.set_yticks([-1, -0.5, 0, 0.5, 1])
    ax.grid(alpha=0.3)
    # Word strip above y = 1.05: the most frequent word of each of STRIP_BINS bins, so a
    # point sitting on the border of two words does not turn the strip into noise.
    chars_per_s = 110.0 / max(x1 - x0, 1e-6)  # about 110 characters fit across a panel
    for left, right, word in strip_words(t, words, t_range):
        ax.axvspan(left, right, ymin=0.91, ymax=1.0, color=word_color(word, emotion), lw=0)
        if word != NEUTRAL and (right - left) * chars_per_s >= len(word) + 1:
            ax.text(
                (left + right) / 2, 1.18, word, ha="center", va="center", fontsize=7.5, **PLAIN_TEXT
            )


def strip_words(
    t: np.ndarray, words: np.ndarray, t_range: tuple[float, float], bins: int = STRIP_BINS
) -> list[tuple[float, float, str]]:
    """(left s, right s, word) stretches of the word strip: time range cut into `bins` equal
    bins (no finer than the rows), each bin named by its most frequent word, equal adjacent
    bins merged; bins without rows are left out. t [N] seconds, words [N] str."""
    x0, x1 = t_range
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.1
    width = max((x1 - x0) / bins, step)
    idx = np.floor((np.asarray(t) - x0) / width).astype(np.int64)
    out: list[tuple[float, float, str]] = []
    for b in np.unique(idx):
        names, counts = np.unique(words[idx == b].astype(str), return_counts=True)
        word = str(names[np.argmax(counts)])
        left, right = x0 + b * width, min(x0 + (b + 1) * width, x1)
        if out and out[-1][2] == word and abs(out[-1][1] - left) < 1e-9:
            out[-1] = (out[-1][0], right, word)
        else:
            out.append((left, right, word))
    return out


def _spans(events: pa.Table | None, video_id: str, track_id: int) -> list[tuple[str, float, float]]:
    if events is None or events.num_rows == 0:
        return []
    out = []
    for r in events.to_pylist():
        if r["video_id"] == video_id and track_id in (r["track_ids"] or []):
            out.append((r["kind"], float(r["start_s"]), float(r["end_s"])))
    return out


def plot_timelines(
    timelines: pa.Table,
    events: pa.Table | None = None,
    output: str | None = None,
    storage: StorageConfig | None = None,
    emotion: EmotionConfig | None = None,
    title: str | None = None,
    dpi: int = DPI,
) -> bytes:
    """PNG bytes (written atomically to `output` too, when given) of ONE video's TIMELINES rows,
    one panel per track, episodes of `events` (EVENTS rows) shaded. The image is
    `figure_size_px(n_tracks, dpi)` pixels. Emotion words come from the `emotion` column when
    present, else are computed with `emotion`. Raises ValueError for zero or several videos."""
    with matplotlib.rc_context(PLAIN_RC):
        fig = timeline_figure(timelines, events, emotion, title, dpi)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    png = buf.getvalue()
    if output:
        with atomic_write(output, storage) as f:
            f.write(png)
    return png


def timeline_figure(
    timelines: pa.Table,
    events: pa.Table | None = None,
    emotion: EmotionConfig | None = None,
    title: str | None = None,
    dpi: int = DPI,
) -> Figure:
    """The matplotlib Figure of `plot_timelines` (every text in it plain, see `PLAIN_TEXT`)."""
    emotion = emotion or EmotionConfig()
    videos = sorted(set(timelines["video_id"].to_pylist()))
    if len(videos) != 1:
        raise ValueError(f"plot one video at a time (got {len(videos)}); choose one with --video")
    table = timelines.sort_by([("track_id", "ascending"), ("time_s", "ascending")])
    video_id, uri = videos[0], table["uri"][0].as_py()
    tracks = sorted(set(table["track_id"].to_pylist()))
    t_all = _column(table, "time_s")
    step = float(np.median(np.diff(np.unique(t_all)))) if len(np.unique(t_all)) > 1 else 0.1
    t_range = (float(t_all.min()) - step / 2, float(t_all.max()) + step / 2)

    w, h = figure_size_px(len(tracks), dpi)
    with matplotlib.rc_context(PLAIN_RC):
        fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
        tid_col = _column(table, "track_id")
        for ax, tid in zip(axes, tracks):
            sel = tid_col == tid
            t = t_all[sel]
            a = _column(table, "arousal")[sel].astype(np.float64)
            v = _column(table, "valence")[sel].astype(np.float64)
            if "emotion" in table.column_names:
                words = np.asarray(table["emotion"].filter(pa.array(sel)).to_pylist(), dtype=object)
            else:
                words = emotion_words(a, v, emotion)
            _panel(ax, t, a, v, words, _spans(events, video_id, tid), t_range, emotion)
            ax.set_ylabel(f"face {tid}", fontsize=10, **PLAIN_TEXT)
        axes[-1].set_xlabel("time (s)", **PLAIN_TEXT)
        _header(fig, table, title or f"{uri}  ({video_id})", h / dpi)
    return fig


def _header(fig: Figure, table: pa.Table, title: str, h_in: float) -> None:
    """Title, the untrained note and the legend above the panels (figure height h_in)."""
    fig.text(0.01, 1 - 0.22 / h_in, title, fontsize=11, va="baseline", **PLAIN_TEXT)
    if "untrained" in table.column_names and any(table["untrained"].to_pylist()):
        note = "UNTRAINED model: values are not predictions of emotion"
        fig.text(0.01, 1 - 0.45 / h_in, note, fontsize=9, color="#d62728", va="baseline",
                 **PLAIN_TEXT)  # fmt: skip
    handles = [
        Patch(color=AROUSAL_COLOR, label="arousal"),
        Patch(color=VALENCE_COLOR, label="valence"),
        Patch(color=EVENT_COLORS["happy"], alpha=0.3, label="happy"),
        Patch(color=EVENT_COLORS["spike"], alpha=0.3, label="spike"),
    ]
    fig.legend(
        handles=handles,
        loc="upper right",
        bbox_to_anchor=(0.99, 1 - 0.28 / h_in),
        ncol=4,
        fontsize=9,
        frameon=False,
    )
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.55 / h_in, top=1 - HEADER_IN * 0.62 / h_in)
