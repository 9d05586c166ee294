"""CLI surface, config loading, and the demo's code path with tiny settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import build_parser, main
from schemas.config import config_hash, config_yaml, load_config
from tests.conftest import asset


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"infer", "faces", "model", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "--help" in text and len(text) > 200


def test_the_parser_loads_no_model_code():
    """`vaerr --help` and every command's parser come up without torch, Ray or the face
    models (2 s here, 7.5 s when `vaerr infer`'s module imported the runner): those load
    where a command runs. In a fresh process: this one has them loaded already."""
    heavy = ("torch", "torchvision", "ray", "face_alignment")
    code = (
        "import sys; from jobs.cli import build_parser; build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_config_overrides_types_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("video:\n  fps: 30\ninfer:\n  output_hz: 5\n")
    cfg = load_config(f, ["faces.landmarks.kind=retina5", "infer.output_hz=null"])
    assert cfg.video.fps == 30.0 and cfg.infer.output_hz is None
    with pytest.raises(ValueError, match="faces.bogus"):
        load_config(None, ["faces.bogus=1"])
    with pytest.raises(ValueError, match="video.fps"):
        load_config(None, ["video.fps=-3"])
    with pytest.raises(ValueError, match="hop_frames"):
        load_config(None, ["infer.window_frames=10", "infer.hop_frames=20"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_config(None, ["novalue"])
    # Frozen: configs cannot be mutated after validation.
    with pytest.raises(ValueError):
        cfg.video.fps = 12  # type: ignore[misc]


def test_config_hash_tracks_results_not_runtime():
    base = config_hash(load_config())
    assert config_hash(load_config(None, ["model.device=cuda", "faces.device=cuda"])) == base
    assert config_hash(load_config(None, ["infer.hop_frames=50"])) != base
    assert config_hash(load_config(None, ["faces.landmarks.kind=retina5"])) != base


def test_secrets_never_in_saved_config():
    cfg = load_config(None, ["storage.secret=hunter2-very-secret", "storage.key=AKIAEXAMPLE"])
    assert "hunter2" not in config_yaml(cfg) and "AKIAEXAMPLE" not in config_yaml(cfg)
    assert "hunter2" not in repr(cfg)


def test_demo_code_path_with_tiny_settings(tmp_path, monkeypatch, capsys):
    """The whole demo (corpus -> preprocess -> finetune -> infer on unseen people -> CCC),
    in-process and tiny: 3 people x 1 s, one epoch, one 2 s unseen video."""
    asset("detectors/retinaface_mobilenet0.25_Final.pth")
    monkeypatch.setenv("VAERR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    sets = ["train.epochs=1", "infer.window_frames=25", "infer.hop_frames=10"]
    code = main(
        ["demo", "-o", str(out), "--videos", "1", "--seconds", "2", "--identities", "3",
         "--videos-per-identity", "1", "--train-seconds", "1", "--local"]
        + [x for s in sets for x in ("--set", s)]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "vaerr demo: about" in captured.err and "minutes" in captured.err
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["ok"] == 1 and summary["untrained"] is False
    assert set(summary["ccc"]) == {"arousal", "valence"}
    assert summary["training"]["checkpoint"] == str(out / "runs" / "demo" / "best.pt")
    assert any(line.startswith("trained checkpoint:") for line in lines)
    assert f"report: {out / 'report.html'}" in "\n".join(lines)
    assert (out / "report.html").stat().st_size > 10_000
    assert any(re.match(r"\s+.* render \S*synthetic_00.mp4 \S+ --output", s) for s in lines)
    assert not any("UNTRAINED" in line for line in lines)
    t = pq.read_table(out / "run" / "timelines").to_pandas()
    assert 15 <= len(t) <= 20 and not t.untrained.any()  # <= 2 s at 10 Hz


def test_the_demo_validates_on_a_third_of_its_people_at_most_40():
    """Every person beyond 40 trains (160 people: 120 train, 40 validate); a small corpus
    keeps a third for validation; a split that leaves no one to train or validate is refused."""
    from training.demo import validation_split

    def counts(n: int, val: int | None = None) -> list[int]:
        return [int(np.floor(f * n + 0.5)) for f in validation_split(n, val)]  # as make_corpus

    assert counts(160) == [120, 40, 0] and counts(120) == [80, 40, 0]
    assert counts(24) == [16, 8, 0] and counts(3) == [2, 1, 0]
    assert counts(160, 20) == [140, 20, 0]
    for bad in (0, 160):
        with pytest.raises(ValueError, match="validation_people"):
            validation_split(160, bad)
