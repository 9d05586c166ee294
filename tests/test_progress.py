"""pipeline/progress.py and training/progress.py: what the driver's terminal shows during long
steps (plain lines when not a terminal, tqdm on one, silent with -q), and per-epoch lines
carried from Ray Train workers to the driver through the reported metrics."""

from __future__ import annotations

import io
import re

import pytest

from pipeline.progress import EpochLine, Progress, fmt_duration, set_verbosity, verbosity


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def default_verbosity():
    saved = verbosity()
    set_verbosity(0)
    yield
    set_verbosity(saved)


def test_plain_lines_every_n_seconds_with_frames_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    with Progress("infer", 4, stream=out, every_s=10, tty=False, clock=clock) as bar:
        clock.t += 5
        bar.video_done(250)  # 5 s in: no line yet
        assert out.getvalue() == ""
        clock.t += 5
        bar.video_done(250)  # 10 s: a line; 2 of 4 videos at 5 s each -> 10 s left
        assert bar.lines == ["infer: 2/4 videos, 500/~1,000 frames, 50.0 frames/s, ETA 10s"]
        clock.t += 20
        bar.video_done(300)
        bar.video_done(200)
    assert bar.lines[-1] == "infer: 4/4 videos, 1,000/1,000 frames, 33.3 frames/s, done in 30s"
    assert out.getvalue().splitlines() == bar.lines


def test_one_video_counts_frames_of_its_total():
    clock, out = Clock(), io.StringIO()
    bar = Progress("render", 1, 1000, stream=out, every_s=1, tty=False, clock=clock, unit="frame")
    with bar:
        for _ in bar.count(range(250)):
            pass
        clock.t += 2
        bar.frames_done(250)
    assert bar.lines[0] == "render: 500/1,000 frames, 250.0 frames/s, ETA 2s"
    assert bar.lines[-1].startswith("render: 500/1,000 frames") and "done in 2s" in bar.lines[-1]


def test_terminal_gets_a_tqdm_bar_and_quiet_gets_nothing():
    out = io.StringIO()
    with Progress("infer", 3, stream=out, tty=True) as bar:
        for _ in range(3):
            bar.video_done(100)
    text = out.getvalue()
    assert "infer" in text and "3/3" in text and "frames/s" in text and "\r" in text
    set_verbosity(-1)
    quiet = io.StringIO()
    with Progress("infer", 3, stream=quiet, tty=False, every_s=0) as bar:
        bar.video_done(100)
    line = EpochLine(3, stream=quiet)({"epoch": 0, "train/loss": 1.0})
    assert quiet.getvalue() == "" and line  # formatted, not printed


def test_verbose_adds_a_line_per_video():
    set_verbosity(1)
    out = io.StringIO()
    with Progress("infer", 2, stream=out, tty=False) as bar:
        bar.video_done(75, "/v/a.mp4", "ok")
    assert "infer: /v/a.mp4: ok, 75 frames" in out.getvalue()


def test_epoch_line():
    out = io.StringIO()
    line = EpochLine(16, "finetune", stream=out)
    text = line({"epoch": 2, "train/loss": 0.41234, "val/ccc_arousal": 0.612,
                 "val/ccc_valence": 0.834, "best_score": 0.723, "best_epoch": 2,
                 "time_s": 20.0})  # fmt: skip
    assert text == (
        "finetune: epoch 3/16  loss 0.4123  val CCC arousal 0.612 valence 0.834  "
        "best 0.723 (epoch 3)  20.0 s/epoch  ETA 4m20s"
    )
    assert out.getvalue() == text + "\n"
    assert fmt_duration(3725) == "1h02m" and fmt_duration(None) == "?"


# --------------------------------------------------------------------------------------------
# Ray Train -> driver


def test_preprocess_prints_its_progress_line(tmp_path, capsys):
    """`vaerr preprocess` ends with one progress line of videos and frames. (The Ray Train
    epoch lines on the driver: tests/test_finetune.py's same-name rerun.)"""
    from schemas.config import load_config
    from tests.conftest import face_overrides
    from training.preprocess import run_preprocess
    from training.synth import make_corpus

    make_corpus(tmp_path / "corpus", 2, 1, 1.0, 3, (0.5, 0.5, 0.0), size=(240, 320),
                with_audio=False)  # fmt: skip
    cfg = load_config(
        None,
        face_overrides()
        + [
            "faces.detector.every_k=10",
            "data.threads=1",
            f"data.videos={tmp_path / 'corpus'}",
            f"data.labels={tmp_path / 'corpus' / 'labels.csv'}",
            f"data.manifest={tmp_path / 'corpus' / 'manifest.csv'}",
            f"data.shards={tmp_path / 'shards'}",
        ],
    )
    run_preprocess(cfg, runner="local")
    err = capsys.readouterr().err
    assert re.search(r"preprocess: 2/2 videos, [\d,]+/[\d,]+ frames, [\d.]+ frames/s, done", err)


# --------------------------------------------------------------------------------------------
# A quiet first screen


def _auth_mode_after(env: dict, address: str | None) -> str:
    import os
    import subprocess
    import sys

    code = (
        "import os; from pipeline.raysetup import before_local_start; "
        f"before_local_start({address!r}); print(os.environ.get('RAY_AUTH_MODE', 'unset'))"
    )
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_local_ray_states_token_auth_so_ray_does_not_warn():
    assert _auth_mode_after({}, None) == "token"  # what Ray defaults to, said explicitly
    assert _auth_mode_after({}, "auto") == "unset"  # a cluster's own setting applies
    assert _auth_mode_after({"RAY_ADDRESS": "10.0.0.1:6379"}, None) == "unset"
    assert _auth_mode_after({"RAY_AUTH_MODE": "disabled"}, None) == "disabled"  # the user's


def test_a_local_ray_polls_ray_train_workers_often_unless_the_user_chose(tmp_path_factory):
    """Ray Train's controller, a Ray worker process, inherits the poll interval that a local
    Ray started by vaerr sets; a user's own setting is kept."""
    import os
    import subprocess
    import sys

    tmp = str(tmp_path_factory.mktemp("ray"))  # short: Ray's socket paths have a length limit
    code = (
        "import os, ray; from pipeline.raysetup import ray_session\n"
        f"with ray_session(None, dict(num_cpus=1, include_dashboard=False, _temp_dir={tmp!r})):\n"
        "    f = ray.remote(num_cpus=0)(\n"
        "        lambda: os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S'))\n"
        "    print(ray.get(f.remote()))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for user, seen in (({}, "0.25"), ({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}, "1.5")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **user},
                             capture_output=True, text=True, check=True, timeout=80)  # fmt: skip
        assert out.stdout.strip().splitlines()[-1] == seen


def test_ray_loggers_quiet_unless_verbose():
    import logging

    from pipeline.raysetup import quiet_loggers

    quiet_loggers()
    assert logging.getLogger("ray.data").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("ray.data._internal.progress").level == logging.ERROR
    set_verbosity(1)
    quiet_loggers()
    assert logging.getLogger("ray").level == logging.INFO
    set_verbosity(0)
    quiet_loggers()


# --------------------------------------------------------------------------------------------
# The demo's figure and its time


def test_ccc_interval_over_people_and_time_estimate():
    import numpy as np

    from training.demo import ccc_interval, estimated_minutes

    rng = np.random.default_rng(0)
    good = []
    for _ in range(12):
        g = rng.uniform(-1, 1, 60)
        good.append((g + rng.normal(0, 0.1, 60), g))
    lo, hi = ccc_interval(good, n_boot=300)
    assert 0.9 < lo < hi <= 1.0
    noisy = [(rng.uniform(-1, 1, 60), g) for _, g in good]
    lo2, hi2 = ccc_interval(noisy, n_boot=300)
    assert lo2 < 0.2 and hi2 < lo and hi2 - lo2 > hi - lo
    assert ccc_interval(good[:2]) is None  # too few people for an interval
    assert estimated_minutes(6.0, cpus=2, load=0.0) == 6.0
    assert estimated_minutes(6.0, cpus=2, load=4.0) == pytest.approx(6.0 * 3**0.5)  # shared
    assert estimated_minutes(6.0, cpus=16, load=1.0) == 6.0
