"""Windows, blending, timeline resampling, emotion words: pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.emotion import emotion_words
from pipeline.timeline import TrackAccumulator, timeline_rows
from pipeline.windows import WindowCutter, blend_weights, window_starts


@pytest.mark.parametrize("length", [1, 7, 50, 99, 100, 101, 150, 151, 333])
def test_window_starts_cover_every_frame(length):
    starts = window_starts(length, 100, 50)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + 100] += 1
    assert (covered >= 1).all() and starts[0] == 0
    assert min(starts[-1] + 100, length) == length


@pytest.mark.parametrize("length,chunk", [(5, 2), (100, 7), (237, 33), (250, 250), (401, 1)])
def test_streaming_cutter_matches_window_starts(length, chunk):
    cutter = WindowCutter(100, 50)
    got = []
    frames = np.arange(length)
    for s in range(0, length, chunk):
        got += list(cutter.add({"frame_index": frames[s : s + chunk]}))
    got += list(cutter.finish())
    assert [s for s, _ in got] == window_starts(length, 100, 50)
    for s, w in got:
        np.testing.assert_array_equal(w["frame_index"], frames[s : s + min(100, length - s)])
    assert cutter.buf is None or len(cutter.buf["frame_index"]) <= 100 + chunk


def test_blend_weights_are_positive_and_peak_mid_window():
    w = blend_weights(200)
    assert w.min() >= 0.1 and w.argmax() in (99, 100) and w[0] == pytest.approx(w[-1])


def test_blending_constant_windows_and_resampling():
    acc = TrackAccumulator()
    box = np.zeros((100, 4), np.float32)
    for start, val in [(0, 0.2), (50, 0.4)]:
        fi = np.arange(start, start + 100)
        meta = {"box_xyxy": box, "det_score": np.ones(100), "interpolated": np.zeros(100, bool)}
        acc.add(fi, np.full(100, val), np.full(100, -val), meta)
    pf = acc.per_frame()
    assert len(pf["frame_index"]) == 150
    assert pf["arousal"][10] == pytest.approx(0.2) and pf["arousal"][140] == pytest.approx(0.4)
    mid = pf["arousal"][50:100]
    assert (mid > 0.2).all() and (mid < 0.4).all() and np.all(np.diff(mid) > 0)
    rows = timeline_rows(pf, fps=25.0, output_hz=10.0)
    np.testing.assert_allclose(rows["time_s"], np.arange(0, 60) / 10)  # 0 .. 5.9 s
    np.testing.assert_array_equal(rows["frame_index"], np.rint(np.arange(60) / 10 * 25))
    per_frame = timeline_rows(pf, fps=25.0, output_hz=None)
    assert len(per_frame["time_s"]) == 150


def test_emotion_words():
    deg = np.deg2rad([30, 125, 195, 290, 0])
    r = np.array([0.8, 0.8, 0.8, 0.8, 0.1])
    words = emotion_words(r * np.sin(deg), r * np.cos(deg))
    assert list(words) == ["Happy", "Angry", "Sad", "Calm", "Neutral"]
