"""pipeline/outputs/events.py on synthetic timelines with planted episodes and near-misses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.emotion import emotion_words
from pipeline.outputs.events import (
    find_happy,
    find_spikes,
    moving_average,
    rolling_extreme,
    runs,
    timeline_columns,
)
from schemas.query import HappyConfig, SpikeConfig
from schemas.tables import EVENTS, TIMELINES, TIMELINES_ADDED, conform

STEP = 0.1  # the job's 10 Hz output step
DURATION = 60.0
NOISE = 0.02  # step-to-step noise of a steady face (the GRU's outputs are smooth)


def times(duration: float = DURATION) -> np.ndarray:
    """Output times k / 10 Hz as the job writes them."""
    return np.arange(int(round(duration / STEP))) / 10.0


def make_timelines(tracks: list[dict]) -> pa.Table:
    """A TIMELINES table from [{video_id, track_id, time_s, arousal, valence, (box)}], the
    other columns filled as the job fills them."""
    parts = []
    for tr in tracks:
        t = np.asarray(tr["time_s"], np.float64)
        a = np.clip(np.asarray(tr["arousal"], np.float64), -1, 1).astype(np.float32)
        v = np.clip(np.asarray(tr["valence"], np.float64), -1, 1).astype(np.float32)
        n = len(t)
        box = tr.get("box", (100.0, 50.0, 200.0, 170.0))
        parts.append(
            pa.table(
                {
                    "video_id": [tr["video_id"]] * n,
                    "uri": [tr.get("uri", f"s3://bucket/videos/{tr['video_id']}.mp4")] * n,
                    "track_id": pa.array([tr["track_id"]] * n, pa.int32()),
                    "time_s": t,
                    "frame_index": pa.array(np.rint(t * 25).astype(np.int32)),
                    "arousal": a,
                    "valence": v,
                    "emotion": list(emotion_words(a, v)),
                    "box_xyxy": pa.array([list(box)] * n, pa.list_(pa.float32(), 4)),
                    "det_score": pa.array(np.full(n, 0.99, np.float32)),
                    "interpolated": [False] * n,
                    "model_id": ["ssvaerr_tiny-test"] * n,
                    "untrained": [False] * n,
                }
            )
        )
    return conform(pa.concat_tables(parts), TIMELINES, fill_missing=TIMELINES_ADDED)


def quiet(seed: int, duration: float = DURATION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, arousal, valence) of a resting face: zero plus small noise."""
    rng = np.random.default_rng(seed)
    t = times(duration)
    return t, rng.normal(0, NOISE, len(t)), rng.normal(0, NOISE, len(t))


def plateau(t: np.ndarray, start: float, stop: float) -> np.ndarray:
    """1 on [start, stop), else 0 (a step up and back down)."""
    return ((t >= start - 1e-9) & (t < stop - 1e-9)).astype(np.float64)


def ramp(t: np.ndarray, start: float, stop: float, back: float) -> np.ndarray:
    """0 before start, linear to 1 at stop, 1 until `back`, then 0 again."""
    r = np.clip((t - start) / (stop - start), 0, 1)
    r[t >= back - 1e-9] = 0
    return r


# Happy video "happy": planted episodes and near-misses (times in s, steps of 0.1 s).
HAPPY_A, HAPPY_V = 0.4, 0.6  # 34 deg: 'Happy'
HAPPY_PLANTED = [  # (track_ids, first row, last row)
    ([0], 10.0, 14.9),  # 5 s, with a one-step dip at 12.5 that must not split it
    ([1], 40.0, 44.9),
    ([2], 41.0, 45.9),
    ([1], 50.0, 52.9),
    ([2], 54.0, 56.9),
]


def happy_video() -> pa.Table:
    tracks = []
    for tid in range(3):
        t, a, v = quiet(tid)
        on = np.zeros_like(t)
        for ids, s, e in HAPPY_PLANTED:
            if tid in ids:
                on += plateau(t, s, e + STEP)
        if tid == 0:
            on[np.isclose(t, 12.5)] = 0  # one-step dip
            on += plateau(t, 20.0, 21.5)  # near-miss: 1.5 s, too short
            low = plateau(t, 25.0, 31.0)  # near-miss: positive but calm ('Pleased')
            v = v + 0.6 * low
            a = a + 0.05 * low
        a = a + HAPPY_A * on
        v = v + HAPPY_V * on
        tracks.append(dict(video_id="happy", track_id=tid, time_s=t, arousal=a, valence=v))
    return make_timelines(tracks)


# Spike video "spikes": (track, ramp start, ramp end) planted; near-misses below.
SPIKE_RISE, SPIKE_DROP = 0.8, 0.5


def spike_video() -> pa.Table:
    tracks = []
    for tid in range(3):
        t, a, v = quiet(10 + tid)
        r = np.zeros_like(t)
        if tid == 0:
            r += ramp(t, 10.0, 10.5, 15.0)  # planted, alone
            r += ramp(t, 30.0, 30.5, 35.0)  # planted, with face 1
            r += ramp(t, 38.0, 48.0, 52.0)  # near-miss: same rise over 10 s
        if tid == 1:
            r += ramp(t, 30.4, 30.8, 35.0)  # planted, 0.4 s after face 0: together
            up = ramp(t, 50.0, 50.5, 55.0)  # near-miss: pleasant surprise (valence up)
            a, v = a + SPIKE_RISE * up, v + SPIKE_DROP * up
        if tid == 2:
            small = ramp(t, 50.0, 50.5, 55.0)  # near-miss: rise of 0.28 only
            a, v = a + 0.28 * small, v - SPIKE_DROP * small
        a, v = a + SPIKE_RISE * r, v - SPIKE_DROP * r
        tracks.append(dict(video_id="spikes", track_id=tid, time_s=t, arousal=a, valence=v))
    return make_timelines(tracks)


SPIKE_PLANTED = [([0], 10.0, 10.5), ([0, 1], 30.0, 30.8)]


def spans(events: pa.Table) -> list[tuple[list[int], float, float]]:
    rows = sorted(events.to_pylist(), key=lambda r: (r["start_s"], r["track_ids"]))
    return [(r["track_ids"], r["start_s"], r["end_s"]) for r in rows]


def assert_same_spans(found: list, planted: list, tol: dict | None = None) -> None:
    """Exactly the planted events, each boundary within one output step (or within
    tol[start of the planted event] seconds)."""
    planted = sorted(planted, key=lambda p: (p[1], p[0]))
    assert [f[0] for f in found] == [p[0] for p in planted], (found, planted)
    for (_, s, e), (_, ps, pe) in zip(found, planted):
        within = (tol or {}).get(ps, STEP) + 1e-6
        assert abs(s - ps) <= within, (s, ps)
        assert abs(e - pe) <= within, (e, pe)


# --------------------------------------------------------------------------------------------
# Helpers


def test_moving_average_keeps_constants_and_step_midpoints():
    x = np.full(50, 0.3)
    assert np.allclose(moving_average(x, STEP, 1.0), 0.3)  # no edge effects either
    step = np.r_[np.zeros(20), np.ones(20)]
    sm = moving_average(step, STEP, 1.0)
    # Symmetric window: the half-way crossing stays on the step's edge.
    assert sm[19] < 0.5 < sm[20]
    assert np.array_equal(moving_average(step, STEP, 0.0), step)


def test_runs_and_rolling_extreme():
    assert runs(np.array([0, 1, 1, 0, 1], bool)).tolist() == [[1, 3], [4, 5]]
    assert runs(np.zeros(3, bool)).shape == (0, 2)
    x = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    assert rolling_extreme(x, 2, "min").tolist() == [3, 1, 1, 1, 2]
    assert rolling_extreme(x, 1, "max").tolist() == [3, 3, 2, 5, 5]


def test_columns_sorted_and_non_finite_dropped():
    t = times(2.0)
    a = np.zeros_like(t)
    a[3] = np.nan
    tab = make_timelines(
        [
            dict(video_id="b", track_id=0, time_s=t, arousal=a, valence=a),
            dict(video_id="a", track_id=1, time_s=t[::-1], arousal=t * 0, valence=t * 0),
        ]
    )
    cols = timeline_columns(tab)
    assert cols["video_id"][0] == "a" and np.all(np.diff(cols["time_s"][:20]) > 0)
    assert len(cols["time_s"]) == 2 * len(t) - 1


# --------------------------------------------------------------------------------------------
# Happy


def test_happy_finds_exactly_the_planted_episodes():
    events = find_happy(happy_video())
    assert events.schema == EVENTS
    assert set(events["kind"].to_pylist()) == {"happy"}
    assert_same_spans(spans(events), HAPPY_PLANTED)
    first = [r for r in events.to_pylist() if r["track_ids"] == [0]][0]
    # Means of the smoothed values (edges and the dip pull them down a little).
    assert first["mean_valence"] == pytest.approx(HAPPY_V, abs=0.07)
    assert first["mean_arousal"] == pytest.approx(HAPPY_A, abs=0.07)
    assert first["peak_valence"] >= first["mean_valence"]
    scores = events["score"].to_pylist()
    assert scores == sorted(scores, reverse=True)  # ranked
    longest = events.to_pylist()[0]
    assert longest["end_s"] - longest["start_s"] >= 4.8  # the 5 s episodes rank first


def test_happy_group_needs_faces_at_once():
    events = find_happy(happy_video(), HappyConfig(min_faces=2))
    # Faces 1 and 2 overlap on [41, 44.9]; 50-53 and 54-57 never overlap; face 0 is alone.
    assert_same_spans(spans(events), [([1, 2], 41.0, 44.9)])
    assert find_happy(happy_video(), HappyConfig(min_faces=3)).num_rows == 0


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        # Shorter minimum: the 1.5 s near-miss appears, nothing planted is lost.
        (dict(min_seconds=1.0), HAPPY_PLANTED + [([0], 20.0, 21.4)]),
        # Longer minimum: only the 5 s episodes stay.
        (dict(min_seconds=4.5), [p for p in HAPPY_PLANTED if p[2] - p[1] > 4]),
        # No arousal requirement: the calm positive stretch (arousal 0.05) appears.
        (dict(min_arousal=-1.0), HAPPY_PLANTED + [([0], 25.0, 30.9)]),
        # Valence above the planted 0.6: nothing.
        (dict(min_valence=0.7), []),
    ],
)
def test_happy_thresholds_move_results_the_right_way(change, expect):
    assert_same_spans(spans(find_happy(happy_video(), HappyConfig(**change))), expect)


def test_happy_does_not_bridge_a_gap_in_a_track():
    t, a, v = quiet(0, 20.0)
    on = plateau(t, 5.0, 15.0)
    keep = ~plateau(t, 9.0, 10.0).astype(bool)  # rows missing for 1 s
    tab = make_timelines(
        [
            dict(
                video_id="gap",
                track_id=0,
                time_s=t[keep],
                arousal=(a + HAPPY_A * on)[keep],
                valence=(v + HAPPY_V * on)[keep],
            )
        ]
    )
    assert_same_spans(spans(find_happy(tab)), [([0], 5.0, 8.9), ([0], 10.0, 14.9)])


def test_pandas_input_gives_the_same_events():
    tab = happy_video()
    assert find_happy(tab.to_pandas()).equals(find_happy(tab))


def test_empty_input_gives_an_empty_events_table():
    empty = TIMELINES.empty_table()
    assert find_happy(empty).schema == EVENTS and find_happy(empty).num_rows == 0
    assert find_spikes(empty).num_rows == 0


# --------------------------------------------------------------------------------------------
# Spikes


def test_spikes_finds_exactly_the_planted_onsets():
    events = find_spikes(spike_video())
    assert events.schema == EVENTS
    assert set(events["kind"].to_pylist()) == {"spike"}
    assert_same_spans(spans(events), SPIKE_PLANTED)
    by_tracks = {tuple(r["track_ids"]): r for r in events.to_pylist()}
    alone, together = by_tracks[(0,)], by_tracks[(0, 1)]
    # Two faces with the same steepness score about twice one face; ranked first.
    assert together["score"] == pytest.approx(2 * alone["score"], rel=0.25)
    assert events.to_pylist()[0]["track_ids"] == [0, 1]
    # Steepness: 0.8 over 0.5 s = 1.6 /s.
    assert alone["score"] == pytest.approx(1.6, rel=0.15)
    assert alone["peak_arousal"] == pytest.approx(SPIKE_RISE, abs=0.08)
    assert alone["peak_valence"] == pytest.approx(-SPIKE_DROP, abs=0.08)


# Boundaries of the near-misses found with looser thresholds: a slow ramp has soft corners,
# a small rise is closer to the noise; the planted onsets keep their one-step bound.
LOOSE = {38.0: 0.6, 50.0: 2 * STEP}


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        # Faces reacting together only.
        (dict(min_faces=2), [([0, 1], 30.0, 30.8)]),
        # Onsets 0.4 s apart are separate events when "together" means 0.2 s.
        (dict(together_seconds=0.2), SPIKE_PLANTED[:1] + [([0], 30.0, 30.5), ([1], 30.4, 30.8)]),
        # An 8 s window also accepts the slow 10 s rise (0.64 in 8 s).
        (dict(window_seconds=8.0), SPIKE_PLANTED + [([0], 38.0, 48.0)]),
        # A smaller minimum rise accepts the 0.28 rise.
        (dict(min_rise=0.2), SPIKE_PLANTED + [([2], 50.0, 50.5)]),
        # Valence must end below -0.6: the planted ones end at -0.5.
        (dict(max_valence=-0.6), []),
    ],
)
def test_spike_thresholds_move_results_the_right_way(change, expect):
    assert_same_spans(spans(find_spikes(spike_video(), SpikeConfig(**change))), expect, LOOSE)


def test_spikes_and_happy_do_not_confuse_each_other():
    assert find_spikes(happy_video()).num_rows == 0
    # The pleasant surprise of the spike video (a 0.5 s ramp up at 50 s, down at 55 s) is a
    # happy episode, and the only one.
    [(tracks, start, end)] = spans(find_happy(spike_video()))
    assert tracks == [1] and 50.0 <= start <= 50.5 and 54.5 <= end <= 55.0
