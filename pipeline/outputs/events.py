"""Episodes over timelines: sustained happy occasions and abrupt distress spikes.

Pure functions over columns. The input is a TIMELINES table (pyarrow Table, pandas DataFrame or
a dict of arrays; only `video_id`, `uri`, `track_id`, `time_s`, `arousal`, `valence` are read);
the output is an EVENTS table (schemas/tables.py), ranked by `score`, highest first.

Every track is cut into *segments* of regularly spaced rows (a time gap over 1.5 output steps
starts a new segment, so nothing is smoothed or differenced across a gap), then:

* `happy`: centred moving average of arousal and valence (`smooth_seconds`), both above their
  thresholds for at least `min_seconds` (measured from the first to the last qualifying row).
  With `min_faces` = 1 an event is one face's episode; with more, it is a stretch of a video where
  at least that many faces qualify at the same output step (faces are aligned on the video's time
  grid), and `track_ids` names every face that qualified in it. Score: face-seconds x mean
  intensity, where intensity = (smoothed valence + smoothed arousal) / 2 of the qualifying rows;
  longer, stronger, more crowded episodes rank first.
* `spike`: after light smoothing, a row is an *onset row* when arousal has risen by at least
  `min_rise` above its minimum of the last `window_seconds`, valence has fallen by at least
  `min_drop` below its maximum of the same window, and the face is now high-arousal
  (>= `min_arousal`) and negative (<= `max_valence`). Each run of onset rows is one onset (runs
  joined while arousal stays up between them: a gate flickering mid-rise); its
  span is the least-squares flat-ramp-flat fit of the raw arousal around the rise (`rise_span`),
  so a ramp planted from t0 to t1 is reported as [t0, t1] to the row, noise averaged out.
  Steepness = the fitted rise / that span (1/s; the span at least one output step). Onsets of
  different faces of one video starting within `together_seconds` of the first are one event;
  score = the sum of the faces' steepness (steeper and more faces together rank first).

All statistics (`peak_*`, `mean_*`) are of the smoothed values the detector thresholded: for
happy the maxima, for spikes the highest arousal and the lowest valence, means over the event's
rows of the faces in it. A spike is a reaction seen on faces; it says nothing about its cause.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from schemas.query import HappyConfig, SpikeConfig
from schemas.tables import EVENTS, conform

COLUMNS = ("video_id", "uri", "track_id", "time_s", "arousal", "valence")
GAP_STEPS = 1.5  # a jump in time over this many output steps starts a new segment
RISE_LO, RISE_HI = 0.1, 0.9  # a rise is measured between its 10 % and 90 % crossings
_EPS = 1e-6
FIT_BUDGET = 2_000_000  # at most this many (knot pair, row) cells per ramp fit (~16 MB each)


class Segment(NamedTuple):
    """Regularly spaced rows of one track: time_s, arousal, valence float64 [N]; step in s."""

    video_id: str
    uri: str
    track_id: int
    time_s: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray
    step: float


# --------------------------------------------------------------------------------------------
# Small numeric helpers


def output_step(time_s: np.ndarray, default: float = 0.1) -> float:
    """The typical spacing of sorted times [N], s (median positive difference); `default`
    (the 10 Hz output step) when fewer than two distinct times."""
    d = np.diff(np.asarray(time_s, np.float64))
    d = d[d > _EPS]
    return float(np.median(d)) if len(d) else default


def moving_average(values: np.ndarray, step: float, seconds: float) -> np.ndarray:
    """Centred moving average of regularly spaced values [N] over a window of `seconds`
    (every row within +-seconds/2 of the centre, inclusive; shrinking at the ends so no padding
    value leaks in). seconds <= one step returns the values unchanged (as float64)."""
    x = np.asarray(values, np.float64)
    half = int(np.floor(seconds / 2 / step + _EPS)) if step > 0 else 0
    if half < 1 or len(x) < 2:
        return x.copy()
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo = np.maximum(i - half, 0)
    hi = np.minimum(i + half + 1, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def runs(mask: np.ndarray) -> np.ndarray:
    """[R, 2] (start, stop) index pairs, stop exclusive, of the runs of True in a bool [N]."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return edges.reshape(-1, 2)


def merge_runs(spans: np.ndarray, values: np.ndarray, tol: float) -> np.ndarray:
    """[R, 2] (start, stop) runs over values [N], a run joined to the previous one when the
    values between them never fall more than `tol` below the previous run's highest value:
    a gate flickering on a threshold in the middle of one rise must not cut it in two, while
    a fall back to rest separates two reactions."""
    out: list[list[int]] = []
    for s, e in spans.tolist():
        if out and values[out[-1][1] : s].min(initial=np.inf) >= (
            values[out[-1][0] : out[-1][1]].max() - tol
        ):
            out[-1][1] = e
        else:
            out.append([s, e])
    return np.asarray(out, np.int64).reshape(-1, 2)


def rolling_extreme(values: np.ndarray, width: int, kind: str) -> np.ndarray:
    """min or max over the current and the `width` previous rows of [N] (the window shrinks at
    the start: the first row's value is repeated, which cannot create a rise)."""
    x = np.asarray(values, np.float64)
    if width < 1 or len(x) == 0:
        return x.copy()
    padded = np.concatenate([np.full(width, x[0]), x])
    win = np.lib.stride_tricks.sliding_window_view(padded, width + 1)
    return win.min(axis=1) if kind == "min" else win.max(axis=1)


# --------------------------------------------------------------------------------------------
# Input


def timeline_columns(timelines: Any) -> dict[str, np.ndarray]:
    """The columns the detectors read, as numpy arrays sorted by (video_id, track_id, time_s),
    rows with a non-finite time or value dropped. Accepts a pyarrow Table, a pandas DataFrame or
    a mapping of column -> array-like."""
    if isinstance(timelines, pa.Table):
        table = timelines.select(list(COLUMNS))
    elif isinstance(timelines, Mapping):
        table = pa.table({c: timelines[c] for c in COLUMNS})
    else:  # pandas.DataFrame (or anything pyarrow can convert)
        table = pa.Table.from_pandas(timelines[list(COLUMNS)], preserve_index=False)
    table = table.sort_by(
        [("video_id", "ascending"), ("track_id", "ascending"), ("time_s", "ascending")]
    )
    cols = {
        "video_id": np.asarray(table["video_id"].to_pylist(), dtype=object),
        "uri": np.asarray(table["uri"].to_pylist(), dtype=object),
        "track_id": table["track_id"].to_numpy(zero_copy_only=False).astype(np.int64),
        "time_s": table["time_s"].to_numpy(zero_copy_only=False).astype(np.float64),
        "arousal": table["arousal"].to_numpy(zero_copy_only=False).astype(np.float64),
        "valence": table["valence"].to_numpy(zero_copy_only=False).astype(np.float64),
    }
    ok = np.isfinite(cols["time_s"]) & np.isfinite(cols["arousal"]) & np.isfinite(cols["valence"])
    return {k: v[ok] for k, v in cols.items()}


def segments(cols: dict[str, np.ndarray]) -> Iterator[Segment]:
    """Regular stretches of each track (see the module doc), in (video, track, time) order."""
    vid, tid, t = cols["video_id"], cols["track_id"], cols["time_s"]
    n = len(t)
    if n == 0:
        return
    new_track = np.concatenate([[True], (vid[1:] != vid[:-1]) | (tid[1:] != tid[:-1])])
    starts = np.flatnonzero(new_track)
    stops = np.append(starts[1:], n)
    for s, e in zip(starts, stops):
        tt = t[s:e]
        step = output_step(tt)
        cut = np.flatnonzero(np.diff(tt) > GAP_STEPS * step) + 1
        bounds = np.concatenate([[0], cut, [e - s]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield Segment(
                str(vid[s]),
                str(cols["uri"][s]),
                int(tid[s]),
                tt[a:b],
                cols["arousal"][s + a : s + b],
                cols["valence"][s + a : s + b],
                step,
            )


# --------------------------------------------------------------------------------------------
# Output


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """EVENTS table of event dicts, ranked by score (highest first), then video and start."""
    if not rows:
        return EVENTS.empty_table()
    cols = {f.name: [r[f.name] for r in rows] for f in EVENTS}
    table = conform(pa.table(cols), EVENTS)
    return table.sort_by(
        [("score", "descending"), ("video_id", "ascending"), ("start_s", "ascending")]
    )


def _event(
    seg: Segment,
    kind: str,
    track_ids: list[int],
    span: tuple[float, float],
    a: np.ndarray,
    v: np.ndarray,
    peaks: tuple[float, float],
    score: float,
) -> dict[str, Any]:
    """One EVENTS row: `span` (start_s, end_s); `a`, `v` the event's smoothed rows; `peaks`
    (arousal, valence) extremes."""
    return {
        "video_id": seg.video_id,
        "uri": seg.uri,
        "kind": kind,
        "track_ids": sorted(set(track_ids)),
        "start_s": float(span[0]),
        "end_s": float(span[1]),
        "peak_arousal": float(peaks[0]),
        "peak_valence": float(peaks[1]),
        "mean_arousal": float(np.mean(a)),
        "mean_valence": float(np.mean(v)),
        "score": float(score),
    }


# --------------------------------------------------------------------------------------------
# Happy


class _Qualified(NamedTuple):
    seg: Segment
    mask: np.ndarray  # bool [N]: both smoothed values above threshold
    a: np.ndarray  # smoothed arousal [N]
    v: np.ndarray  # smoothed valence [N]


def _happy_masks(cols: dict[str, np.ndarray], cfg: HappyConfig) -> list[_Qualified]:
    out = []
    for seg in segments(cols):
        a = moving_average(seg.arousal, seg.step, cfg.smooth_seconds)
        v = moving_average(seg.valence, seg.step, cfg.smooth_seconds)
        out.append(_Qualified(seg, (a >= cfg.min_arousal) & (v >= cfg.min_valence), a, v))
    return out


def _long_enough(t0: float, t1: float, min_seconds: float, step: float) -> bool:
    return t1 - t0 >= min_seconds - 1e-3 * step


def find_happy(timelines: Any, cfg: HappyConfig | None = None) -> pa.Table:
    """Sustained positive episodes (module doc) of a TIMELINES table -> EVENTS, kind 'happy'."""
    cfg = cfg or HappyConfig()
    quals = _happy_masks(timeline_columns(timelines), cfg)
    if cfg.min_faces > 1:
        return events_table(_group_happy(quals, cfg))
    rows = []
    for q in quals:
        t = q.seg.time_s
        for s, e in runs(q.mask):
            if not _long_enough(t[s], t[e - 1], cfg.min_seconds, q.seg.step):
                continue
            a, v = q.a[s:e], q.v[s:e]
            score = (e - s) * q.seg.step * float(np.mean((a + v) / 2))
            span, peaks = (t[s], t[e - 1]), (a.max(), v.max())
            rows.append(_event(q.seg, "happy", [q.seg.track_id], span, a, v, peaks, score))
    return events_table(rows)


def _group_happy(quals: list[_Qualified], cfg: HappyConfig) -> list[dict[str, Any]]:
    """Stretches of each video where >= min_faces tracks qualify at the same grid step."""
    by_video: dict[str, list[_Qualified]] = {}
    for q in quals:
        by_video.setdefault(q.seg.video_id, []).append(q)
    rows = []
    for group in by_video.values():
        step = float(np.median([q.seg.step for q in group]))
        keys = [np.rint(q.seg.time_s / step).astype(np.int64) for q in group]
        k0 = min(int(k.min()) for k in keys)
        k1 = max(int(k.max()) for k in keys)
        count = np.zeros(k1 - k0 + 1, np.int64)
        for q, k in zip(group, keys):
            count[np.unique(k[q.mask]) - k0] += 1
        for s, e in runs(count >= cfg.min_faces):
            lo, hi = s + k0, e - 1 + k0
            if not _long_enough(lo * step, hi * step, cfg.min_seconds, step):
                continue
            tracks, a_parts, v_parts = [], [], []
            for q, k in zip(group, keys):
                sel = q.mask & (k >= lo) & (k <= hi)
                if sel.any():
                    tracks.append(q.seg.track_id)
                    a_parts.append(q.a[sel])
                    v_parts.append(q.v[sel])
            a, v = np.concatenate(a_parts), np.concatenate(v_parts)
            score = len(a) * step * float(np.mean((a + v) / 2))
            span, peaks = (lo * step, hi * step), (a.max(), v.max())
            rows.append(_event(group[0].seg, "happy", tracks, span, a, v, peaks, score))
    return rows


# --------------------------------------------------------------------------------------------
# Spikes


class Onset(NamedTuple):
    """One face's abrupt rise (see `rise_span`); a, v: its segment's smoothed values [N]."""

    seg: Segment
    start_s: float
    end_s: float
    a: np.ndarray
    v: np.ndarray
    steepness: float  # arousal gained per second over [start_s, end_s]


def crossing_rows(a: np.ndarray, base: int, apex: int) -> tuple[int, int]:
    """(i10, i90): the last row of a [N] at or under 10 % of the rise from row `base` to row
    `apex`, and the first row after it at or over 90 %."""
    lo, hi = a[base], a[apex]
    below = np.flatnonzero(a[base : apex + 1] <= lo + RISE_LO * (hi - lo))
    i10 = base + int(below[-1]) if len(below) else base
    above = np.flatnonzero(a[i10 : apex + 1] >= lo + RISE_HI * (hi - lo))
    return i10, (i10 + int(above[0]) if len(above) else apex)


def fit_ramp(
    t: np.ndarray, y: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[int, int, float, float]:
    """Least-squares flat-ramp-flat fit of y [N] at times t [N]: y = lo before t[k1], a straight
    line from lo to hi between t[k1] and t[k2], hi after. Every knot pair in starts x ends
    (row indices, k1 < k2) is tried, and (lo, hi) solved in closed form for each, so noise on
    the rows averages out instead of moving a threshold crossing (knots thinned evenly, the
    last start and first end kept, when pairs x rows exceed FIT_BUDGET). Returns (k1, k2, lo,
    hi)."""
    # Bound the work ([pairs, N] arrays) for very long windows: thin the knot candidates.
    stride = max(1, int(np.ceil(np.sqrt(len(starts) * len(ends) * len(t) / FIT_BUDGET))))
    k1, k2 = np.meshgrid(starts[::-1][::stride][::-1], ends[::stride], indexing="ij")
    ok = k1 < k2
    if not ok.any():
        return int(starts[0]), int(ends[-1]), float(y[starts[0]]), float(y[ends[-1]])
    k1, k2 = k1[ok], k2[ok]
    t1, t2 = t[k1][:, None], t[k2][:, None]
    r = np.clip((t[None, :] - t1) / (t2 - t1), 0.0, 1.0)  # [pairs, N], 0 = lo, 1 = hi
    q = 1.0 - r
    # Normal equations of y ~ lo * q + hi * r, per pair.
    sqq, srr, sqr = (q * q).sum(1), (r * r).sum(1), (q * r).sum(1)
    sqy, sry = q @ y, r @ y
    det = np.maximum(sqq * srr - sqr * sqr, 1e-12)
    lo = (srr * sqy - sqr * sry) / det
    hi = (sqq * sry - sqr * sqy) / det
    sse = ((lo[:, None] * q + hi[:, None] * r - y[None, :]) ** 2).sum(1)
    best = int(np.argmin(sse))
    return int(k1[best]), int(k2[best]), float(lo[best]), float(hi[best])


def rise_span(
    seg: Segment, a: np.ndarray, base: int, apex: int, last: int, w: int, half: int
) -> tuple[float, float, float]:
    """(start_s, end_s, steepness 1/s) of the rise of smoothed arousal a [N] from row `base` to
    row `apex` of a segment (`last`: the last onset row of the run): the flat-ramp-flat
    least-squares fit (`fit_ramp`) of the *raw* arousal over the rise and as many rows of
    plateau on each side as the rise is long (3 to `w`; never before the base nor after the
    run), its knots searched before the 10 % crossing and after the 90 % crossing of the
    smoothed rise (widened by the smoothing half-width `half`, which moves crossings by up to
    that many rows). A planted linear ramp from t0 to t1 comes back as [t0, t1] to the row for
    sub-second onsets; slow ramps have soft corners and are found to within a few rows."""
    i10, i90 = crossing_rows(a, base, apex)
    n = len(a)
    # Plateau context: as long as the rise itself (at least 3 rows, at most the window), so
    # whatever the face does a while later does not pull the fit.
    ctx = min(w, max(3, i90 - i10))
    left = max(0, max(i10 - ctx, base) - half)  # before the base (the minimum): another event
    right = min(n - 1, i90 + ctx + half, last + half)  # after the run: the reaction is over
    starts = np.arange(left, min(i10 + half + 1, n - 1) + 1)
    ends = np.arange(max(i90 - half - 1, left + 1), right + 1)
    rows = slice(left, right + 1)
    k1, k2, lo, hi = fit_ramp(seg.time_s[rows], seg.arousal[rows], starts - left, ends - left)
    start, end = float(seg.time_s[left + k1]), float(seg.time_s[left + k2])
    return start, end, (hi - lo) / max(end - start, seg.step)


def find_onsets(seg: Segment, cfg: SpikeConfig) -> list[Onset]:
    """Abrupt high-arousal, negative-valence onsets of one segment (module doc)."""
    a = moving_average(seg.arousal, seg.step, cfg.smooth_seconds)
    v = moving_average(seg.valence, seg.step, cfg.smooth_seconds)
    w = max(1, int(round(cfg.window_seconds / seg.step)))
    half = int(np.floor(cfg.smooth_seconds / 2 / seg.step + _EPS))
    rise = a - rolling_extreme(a, w, "min")
    drop = rolling_extreme(v, w, "max") - v
    hit = (
        (rise >= cfg.min_rise - _EPS)
        & (drop >= cfg.min_drop - _EPS)
        & (a >= cfg.min_arousal)
        & (v <= cfg.max_valence)
    )
    found: list[Onset] = []
    for s, e in merge_runs(runs(hit), a, cfg.min_rise / 2):
        apex = s + int(np.argmax(a[s:e]))
        lo = max(0, s - w)
        base = apex - int(np.argmin(a[lo : apex + 1][::-1]))  # the latest minimum before apex
        start, end, steep = rise_span(seg, a, base, apex, e - 1, w, half)
        if found and start <= found[-1].end_s:  # the same rise seen twice (a flickering gate)
            continue
        found.append(Onset(seg, start, end, a, v, steep))
    return found


def _cluster(onsets: list[Onset], together_s: float) -> list[list[Onset]]:
    """Group one video's onsets whose start lies within `together_s` of the group's first."""
    groups: list[list[Onset]] = []
    for o in sorted(onsets, key=lambda o: o.start_s):
        if groups and o.start_s - groups[-1][0].start_s <= together_s + _EPS:
            groups[-1].append(o)
        else:
            groups.append([o])
    return groups


def _spike_event(group: list[Onset]) -> dict[str, Any]:
    start = min(o.start_s for o in group)
    end = max(o.end_s for o in group)
    best: dict[int, float] = {}
    a_parts, v_parts = [], []
    for o in group:
        tid = o.seg.track_id
        best[tid] = max(best.get(tid, 0.0), o.steepness)
        sel = (o.seg.time_s >= start - _EPS) & (o.seg.time_s <= end + _EPS)
        if not sel.any():  # a span between two rows: take the nearest row
            sel = np.arange(len(o.seg.time_s)) == np.argmin(np.abs(o.seg.time_s - end))
        a_parts.append(o.a[sel])
        v_parts.append(o.v[sel])
    a, v = np.concatenate(a_parts), np.concatenate(v_parts)
    peaks = (a.max(), v.min())
    return _event(group[0].seg, "spike", list(best), (start, end), a, v, peaks, sum(best.values()))


def find_spikes(timelines: Any, cfg: SpikeConfig | None = None) -> pa.Table:
    """Abrupt distress onsets (module doc) of a TIMELINES table -> EVENTS, kind 'spike'."""
    cfg = cfg or SpikeConfig()
    by_video: dict[str, list[Onset]] = {}
    for seg in segments(timeline_columns(timelines)):
        by_video.setdefault(seg.video_id, []).extend(find_onsets(seg, cfg))
    rows = []
    for onsets in by_video.values():
        for group in _cluster(onsets, cfg.together_seconds):
            if len({o.seg.track_id for o in group}) >= cfg.min_faces:
                rows.append(_spike_event(group))
    return events_table(rows)
