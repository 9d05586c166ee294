"""`vaerr paper TABLE` end to end on the synthetic corpus with ssvaerr_tiny: the shipped
paper configs (with every run's settings shrunk by --set), a refused row whose pretext
encoder is missing, --with-pretext running it, the table built from the real runs'
evaluations, a rerun that skips the done rows, and cited rows printed, never run."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import main
from schemas.config import load_config
from tests.conftest import face_overrides
from training.paper import run_paper
from training.preprocess import run_preprocess
from training.synth import make_corpus

CORPUS = {"n_identities": 6, "videos_per_identity": 1, "seconds": 2.0, "seed": 5,
          "split_fractions": (0.5, 0.17, 0.33), "size": (240, 320), "with_audio": True}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("papercorpus")
    manifest = make_corpus(root / "corpus", **CORPUS)
    assert {m["split"] for m in manifest} == {"train", "validation", "test"}
    cfg = load_config(
        None,
        face_overrides()
        + [
            "faces.detector.every_k=10",
            "data.threads=1",
            f"data.videos={root / 'corpus'}",
            f"data.labels={root / 'corpus' / 'labels.csv'}",
            f"data.manifest={root / 'corpus' / 'manifest.csv'}",
            f"data.shards={root / 'shards'}",
        ],
    )
    summary = run_preprocess(cfg, runner="local")
    assert summary["ok"] == 6 and summary["annotated_frames"] >= summary["labelled_frames"] > 0
    return str(root / "shards")


def _sets(items: list[str], flag: str = "--set") -> list[str]:
    return [x for s in items for x in (flag, s)]


def _small(shards: str) -> list[str]:
    """Every run's settings shrunk (the base's splits are SEWA's: train / validation / test)."""
    return [
        "model.arch=ssvaerr_tiny", f"data.shards={shards}", "train.use_gpu=false",
        "train.threads=1", "train.epochs=1", "train.clip_frames=25", "train.clips_per_file=1",
        "train.batch_size=2", "evaluate.protocols=[sequence]",
    ]  # fmt: skip


def _pretext(shards: str) -> list[str]:
    """The pretext run's settings shrunk."""
    return [
        "model.arch=ssvaerr_tiny", f"data.shards={shards}", "train.use_gpu=false",
        "train.num_workers=1", "train.threads=1", "train.epochs=1", "train.clip_seconds=1",
        "train.batch_size=2", "train.train_splits=[train]", "train.val_splits=[]",
        "pretrain.lira.conformer_dim=32", "pretrain.lira.conformer_layers=1",
        "pretrain.lira.mlp_hidden=32",
    ]  # fmt: skip


SEWA_CITED = {"ho-cpconv": (0.52, 0.75, "cited", None),
              "ap-det-att": (0.662, 0.672, "cited", None),
              "ap-best": (0.64, 0.75, "cited", None)}  # fmt: skip


def _cited(rows: list[dict]) -> dict[str, tuple]:
    """The table's cited rows: row -> (paper A, paper V, status, ours A)."""
    return {r["row"]: (r["paper_arousal"], r["paper_valence"], r["status"], r["ours_arousal"])
            for r in rows if r["kind"] == "cited"}  # fmt: skip


def test_paper_table_from_real_runs_and_resumable(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # -o out is relative: the configs' runs/ paths land in it
    small, pretext = _small(shards), _pretext(shards)
    args = ["paper", "I", "--datasets", "sewa", "--rows", "backbone,scratch", "--local",
            "-o", "out", *_sets(small)]  # fmt: skip

    # 1. the backbone row needs the LiRA encoder: refused, naming the pretrain config
    assert main(args) == 2
    err = capsys.readouterr().err
    encoder = tmp_path / "out" / "runs" / "paper-pretrain-lira-lrs3" / "encoder.pt"
    assert f"needs {encoder}" in err and "lrs3/pretrain_lira.yaml" in err  # under -o
    assert f"pretrain.output={encoder}" in err  # the command that writes it there
    assert not (tmp_path / "out" / "results").exists()  # nothing ran, not even scratch

    # 2. the dry run prints the plan, runs nothing
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "needs-encoder" in out and "i_scratch.yaml" in out and "iii_01_ccc_finetuned" in out
    assert f"reads shards {shards}" in out
    cited = [line for line in out.splitlines() if line.startswith("cited")]
    assert len(cited) == 3 and all("/sewa: " in line for line in cited)  # --datasets sewa
    assert json.loads(out.strip().splitlines()[-1])["cited"] == 3

    # 3. --with-pretext: LiRA pretraining first, then both rows, then the table
    assert main([*args, "--with-pretext", *_sets(pretext, "--pretext-set")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done_before"] == 0 and len(summary["ran"]) == 2
    assert encoder.exists() and not (tmp_path / "runs").exists()  # all under -o
    rows = pq.read_table(tmp_path / "out" / "table_I.parquet").to_pylist()
    table = [r for r in rows if r["kind"] == "run"]
    assert [(r["row"], r["column"]) for r in table] == [("backbone", "sewa"), ("scratch", "sewa")]
    assert _cited(rows) == SEWA_CITED  # Table I's other papers, beside ours, never run
    for r in table:  # built from the real runs: the run's evaluation, its checkpoint, coverage
        res = json.loads((tmp_path / "out" / "results" / f"{r['config_hash']}.json").read_text())
        ev = json.loads((tmp_path / "out" / "eval" / r["config_hash"] / "summary.json").read_text())
        assert r["run_id"] == res["run_id"] and os.path.exists(res["checkpoint"])
        assert res["checkpoint"].startswith(str(tmp_path / "out" / "runs"))
        assert r["run_id"] in res["checkpoint"]
        assert r["ours_arousal"] == pytest.approx(ev["protocols"]["sequence"]["arousal"]["ccc"])
        assert r["ours_valence"] == pytest.approx(ev["protocols"]["sequence"]["valence"]["ccc"])
        assert r["diff_arousal"] == pytest.approx(r["ours_arousal"] - r["paper_arousal"], abs=1e-4)
        cov = ev["coverage"]
        assert r["frames_scored"] == cov["overall"]["scored"] == cov["test"]["scored"] > 0
        assert 0 < r["coverage"] <= 1 and cov["overall"]["present_source"] == "annotation"
        assert r["frames_labelled"] == cov["test"]["labelled"] >= r["frames_scored"]
        assert r["eval_split"] == "test" and r["status"] == "done"
        # the run record states the batch: global 2 on one worker
        assert res["batch"] == {"global": 2, "per_worker": 2, "workers": 1}
    paper = {r["row"]: (r["paper_arousal"], r["paper_valence"]) for r in table}
    assert paper == {"backbone": (0.678, 0.737), "scratch": (0.588, 0.609)}
    md = (tmp_path / "out" / "table_I.md").read_text()
    assert "| backbone | sewa | 0.678 | 0.737 |" in md and table[0]["run_id"] in md
    assert "| ho-cpconv | sewa | 0.520 | 0.750 | - | - |" in md and "cited" in md

    # 4. a rerun skips the done rows (no training), and cited rows are printed, not run
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "results").iterdir()}
    cited = tmp_path / "cited.yaml"
    cited.write_text(
        "rows:\n- {table: I, row: other-method, column: sewa, arousal: 0.5, valence: 0.6,"
        " cite: 'Someone et al. 2020'}\n"
    )
    lines: list[str] = []
    again = run_paper(
        "I", "out", datasets=("sewa",), rows=("backbone", "scratch"), overrides=small,
        local=True, cited=cited, echo=lines.append,
    )  # fmt: skip
    assert again["ran"] == [] and again["done_before"] == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert any("cited" in line and "Someone et al. 2020" in line for line in lines)
    rows = pq.read_table(tmp_path / "out" / "table_I.parquet").to_pylist()
    cited_rows = [r for r in rows if r["kind"] == "cited"]
    assert len(cited_rows) == 1 and cited_rows[0]["run_id"] is None
    assert cited_rows[0]["paper_arousal"] == 0.5 and cited_rows[0]["ours_arousal"] is None
