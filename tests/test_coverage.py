"""Coverage: labelled frames scored / labelled frames present, per split and overall; the
annotation's frames counted whether or not a face track covers them; the flag that keeps
every track overlapping the labelled face."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.config import load_config
from training.datasets.items import LabelTrack
from training.evaluate import coverage
from training.preprocess import annotated_frames, overlapping_tracks, preprocess_hash


def _scored(split: str, vid: str, labels: np.ndarray) -> dict:
    return {"split": split, "video_id": vid, "labels": {"arousal": labels, "valence": labels}}


def test_coverage_counts_what_preprocessing_dropped():
    nan = np.nan
    scored = [
        _scored("test", "a", np.array([0.1, nan, 0.2, 0.3])),  # 3 labelled frames scored
        _scored("validation", "c", np.array([0.5, 0.5])),
    ]
    status = [  # video b had no face: its 50 annotated frames were never scored
        {"split": "test", "video_id": "a", "annotated_frames": 10, "labelled_frames": 3},
        {"split": "test", "video_id": "b", "annotated_frames": 50, "labelled_frames": 0},
        {"split": "validation", "video_id": "c", "annotated_frames": 2, "labelled_frames": 2},
    ]
    cov = coverage(scored, status, ("test", "validation"))
    assert cov["test"] == {"scored": 3, "labelled": 60, "fraction": 0.05, "videos": 2,
                           "videos_scored": 1, "present_source": "annotation"}  # fmt: skip
    assert cov["validation"]["fraction"] == 1.0
    assert cov["overall"]["scored"] == 5 and cov["overall"]["labelled"] == 62
    # shards from before the column: falls back to the kept sequences, and says so
    old = [{**s, "annotated_frames": None} for s in status]
    cov_old = coverage(scored, old, ("test",))
    assert cov_old["test"]["labelled"] == 3 and cov_old["overall"]["present_source"] == "sequences"


def test_annotated_frames_at_the_analysis_rate():
    t = np.arange(0, 2.0, 0.1)  # 0.1 s annotations for 2 s; a hole from 1.0 to 1.5 s
    a = np.where((t > 0.95) & (t < 1.55), np.nan, 0.3)
    lt = LabelTrack(face=None, time_s=t, frame=None, arousal=a, valence=np.full_like(t, 0.1))
    n = annotated_frames([lt], 25.0, 50, None, None)  # 50 frames at 25 fps = 2 s
    assert 30 <= n <= 40  # the hole (about 0.4 s + gap tolerance) and the end are unlabelled
    assert annotated_frames([lt, lt], 25.0, 50, None, None) == 2 * n  # per annotated person
    # frame-indexed labels without the source rate: unknown, not a made-up number
    lf = LabelTrack(face=None, time_s=None, frame=np.arange(10), arousal=np.zeros(10),
                    valence=np.zeros(10))  # fmt: skip
    assert annotated_frames([lf], 25.0, None, None, None) is None


def _track(frames: range, box: tuple[float, float, float, float]) -> dict:
    n = len(frames)
    return {"frame_index": np.asarray(frames), "box_xyxy": np.tile(np.asarray(box, float), (n, 1))}


def test_overlapping_tracks_are_the_same_face_refound():
    tracks = {
        0: _track(range(0, 50), (100, 100, 200, 200)),  # the labelled face (largest)
        1: _track(range(60, 80), (105, 95, 205, 195)),  # same place, later: re-found
        2: _track(range(40, 70), (110, 110, 210, 210)),  # same place but overlaps 0 in time
        3: _track(range(50, 60), (400, 100, 450, 150)),  # someone else
    }
    assert overlapping_tracks(tracks, 0, 0.3, {0}) == [1]
    assert overlapping_tracks(tracks, 0, 0.99, {0}) == []
    assert overlapping_tracks(tracks, 0, 0.3, {0, 1}) == []  # already used
    # the flag is off by default and then leaves the preprocess hash (old shards) unchanged
    base = load_config()
    assert base.data.label_tracks == "one"
    on = load_config(None, ["data.label_tracks=overlapping"])
    assert preprocess_hash(on) != preprocess_hash(base)
    with pytest.raises(ValueError):
        load_config(None, ["data.label_tracks=every"])
