"""Accuracy on the synthetic corpus, split by identity (held-out people in `test`).

Three tables, all on the same corpus and split, `ssvaerr_tiny`, in-process training
(`run_training(..., runner="local")`) and `run_evaluate` on the test identities:

1. CCC (AVEC convention: pooled over all test sequences) for arousal and valence of a model
   trained from scratch, next to a shuffled-label control (every training frame's label pair
   permuted across all training frames: same label distribution, no link to the faces);
2. label efficiency: fine-tuning on 5%, 20% and 100% of the training videos' labels, from
   scratch vs from a LiRA-pretrained encoder (pretrained on the training identities' talking
   faces and their audio, no labels); plus a LiRA run on shifted audio (the pretext's own
   control), so a pretrained encoder that does not help can be told apart from a pretext
   that learned nothing;
3. every loss configuration of the paper's table (METHOD.md), from scratch, on a reduced
   schedule (`--loss-epochs`).

The corpus (`training.synth.make_corpus`) and its shards (`vaerr preprocess`'s code, retina5,
detection every 5th frame) are cached in the workdir. Schedules are reduced for a 2-core CPU
and stated in the output; knobs to scale up on a GPU: `--identities`, `--seconds`,
`--size`, `--epochs`, `--pretrain-epochs`, `--loss-epochs`, `--set train.use_gpu=true
--set model.device=cuda` (and `--set train.clip_seconds=4 --set train.batch_size=5
--set train.lr=3e-4` for the paper's recipe).

    .venv/bin/python -m bench.accuracy --quick        # about 10 min on 2 CPU cores
    .venv/bin/python -m bench.accuracy                # under 60 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    add_common_args,
    append_results,
    begin,
    bench_parser,
    face_overrides,
    fmt_load,
    load1,
    log,
    markdown_table,
    num,
)

MODULE = "bench.accuracy"

# The paper's loss table (METHOD.md, "Losses"): name -> per-target weights
# (w_ccc, w_mse, w_ce, w_ncce) for arousal and valence.
LOSSES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "CCC": {"arousal": (1, 0, 0, 0), "valence": (1, 0, 0, 0)},
    "MSE": {"arousal": (0, 1, 0, 0), "valence": (0, 1, 0, 0)},
    "0.5 CCC + 0.5 CE": {"arousal": (0.5, 0, 0.5, 0), "valence": (0.5, 0, 0.5, 0)},
    "0.5 CCC + 0.25 CE + 0.25 MSE": {
        "arousal": (0.5, 0.25, 0.25, 0),
        "valence": (0.5, 0.25, 0.25, 0),
    },
    "V: CCC; A: 0.66 CCC + 0.34 CE": {"arousal": (0.66, 0, 0.34, 0), "valence": (1, 0, 0, 0)},
    "V: CCC; A: 0.66 CCC + 0.17 CE + 0.17 MSE": {
        "arousal": (0.66, 0.17, 0.17, 0),
        "valence": (1, 0, 0, 0),
    },
    "0.5 CCC + 0.5 nCCE": {"arousal": (0.5, 0, 0, 0.5), "valence": (0.5, 0, 0, 0.5)},
    "0.5 CCC + 0.25 nCCE + 0.25 MSE": {
        "arousal": (0.5, 0.25, 0, 0.25),
        "valence": (0.5, 0.25, 0, 0.25),
    },
}
DEFAULT_LOSS = "0.5 CCC + 0.25 CE + 0.25 MSE"

# Small-CPU recipe (as tests/test_finetune.py): short clips, small batches, a higher
# learning rate than the paper's (which is for GPUs and real corpora).
TRAIN = [
    "model.arch=ssvaerr_tiny",
    "train.clip_seconds=1",
    "train.clips_per_file=4",
    "train.batch_size=4",
    "train.lr=3e-3",
]
LIRA = [
    "train.clip_seconds=2",
    "train.batch_size=6",
    "train.lr=1e-3",
    "train.val_splits=[]",
    "augment.hflip_p=0",
    "pretrain.method=lira",
    "pretrain.lira.conformer_dim=64",
    "pretrain.lira.conformer_layers=2",
    "pretrain.lira.conformer_heads=4",
    "pretrain.lira.conformer_kernel=15",
    "pretrain.lira.mlp_hidden=128",
    "pretrain.lira.dropout=0.0",
]


def loss_overrides(name: str) -> list[str]:
    """--set lines for one loss configuration (every weight explicit)."""
    out = []
    for target, (c, m, ce, n) in LOSSES[name].items():
        out += [
            f"loss.{target}.w_ccc={c}",
            f"loss.{target}.w_mse={m}",
            f"loss.{target}.w_ce={ce}",
            f"loss.{target}.w_ncce={n}",
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Data: corpus, shards, label subsets, shuffled control


def corpus_and_shards(a: argparse.Namespace) -> tuple[Path, str, list[dict[str, Any]]]:
    """Render the corpus and preprocess it (both cached by their parameters)."""
    from schemas.config import load_config
    from training.preprocess import run_preprocess
    from training.synth import make_corpus

    h, w = (int(x) for x in a.size.split("x"))
    key = json.dumps([a.identities, a.videos_per_identity, a.seconds, a.seed, h, w])
    root = a.workdir / "accuracy" / hashlib.sha256(key.encode()).hexdigest()[:10]
    corpus, shards = root / "corpus", root / "shards"
    done = root / "shards.done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        make_corpus(
            corpus,
            a.identities,
            a.videos_per_identity,
            a.seconds,
            a.seed,
            (0.6, 0.2, 0.2),
            size=(h, w),
            with_audio=True,
            workers=os.cpu_count() or 1,
        )
        log(f"corpus rendered in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        cfg = load_config(
            None,
            face_overrides("retina5")
            + [
                "faces.detector.every_k=5",
                f"data.videos={corpus}",
                f"data.labels={corpus / 'labels.csv'}",
                f"data.manifest={corpus / 'manifest.csv'}",
                f"data.shards={shards}",
            ],
        )
        summary = run_preprocess(cfg, runner="local")
        log(f"preprocessed in {time.perf_counter() - t0:.0f} s: {summary}")
        done.write_text(json.dumps(summary))
    import csv

    with open(corpus / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    return root, str(shards), manifest


def _copy_shards(src: str, dst: Path, copy_clips: bool) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for sub in os.listdir(src):
        s = Path(src) / sub
        if sub == "clips" and not copy_clips:
            os.symlink(s, dst / sub)
        elif s.is_dir():
            shutil.copytree(s, dst / sub)
        else:
            shutil.copy2(s, dst / sub)


def label_subset(src: str, dst: Path, fraction: float, seed: int) -> tuple[str, int, int]:
    """Shards whose `train` split keeps a random `fraction` of the training videos (at least
    one); the others' sequences move to split `unused` (not trained on). Clips are shared
    (symlink). Returns (root, kept, total)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    _copy_shards(src, dst, copy_clips=False)
    seq_dir = dst / "sequences"
    files = sorted(seq_dir.glob("*.parquet"))
    train = [p for p in files if "train" in pq.read_table(p)["split"].to_pylist()]
    k = max(1, int(round(fraction * len(train))))
    keep = set(np.random.default_rng(seed).choice(len(train), k, replace=False).tolist())
    for i, p in enumerate(train):
        if i not in keep:
            t = pq.read_table(p)
            split = pa.array(["unused"] * t.num_rows, pa.string())
            pq.write_table(t.set_column(t.schema.get_field_index("split"), "split", split), p)
    return str(dst), k, len(train)


def shuffled_labels(src: str, dst: Path, seed: int) -> str:
    """Shards with every training frame's (arousal, valence) pair permuted across all
    training frames; validation and test labels stay true."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.datasets.shards import read_sequences

    _copy_shards(src, dst, copy_clips=True)
    seqs = read_sequences(str(dst), splits=("train",))
    uris = sorted({s["shard_uri"] for s in seqs})
    tables = [pq.read_table(u) for u in uris]
    a = np.concatenate([t["arousal"].to_numpy(zero_copy_only=False) for t in tables])
    v = np.concatenate([t["valence"].to_numpy(zero_copy_only=False) for t in tables])
    perm = np.random.default_rng(seed).permutation(len(a))
    a, v = a[perm], v[perm]
    start = 0
    for u, t in zip(uris, tables):
        n = t.num_rows
        for name, vals in (("arousal", a), ("valence", v)):
            col = pa.array(vals[start : start + n], pa.float32())
            t = t.set_column(t.schema.get_field_index(name), name, col)
        start += n
        pq.write_table(t, u, row_group_size=250)
    return str(dst)


# ---------------------------------------------------------------------------------------------
# Runs


class Runner:
    """Trains and evaluates, records wall time and load per run, respects a time budget."""

    def __init__(self, a: argparse.Namespace, root: Path, shards: str) -> None:
        self.a = a
        self.runs = root / f"runs_{int(time.time())}"
        self.shards = shards
        self.t0 = time.perf_counter()
        self.log: list[dict[str, Any]] = []

    def left_s(self) -> float:
        return self.a.budget_min * 60 - (time.perf_counter() - self.t0)

    def cfg(self, shards: str, name: str, extra: list[str]) -> Any:
        from schemas.config import load_config

        return load_config(
            None,
            TRAIN
            + [
                f"data.shards={shards}",
                f"train.storage_path={self.runs}",
                f"train.name={name}",
                f"train.seed={self.a.seed}",
                f"train.threads={self.a.threads}",
            ]
            + extra
            + list(self.a.sets),
        )

    def finetune(
        self, name: str, extra: list[str], shards: str | None = None, epochs: int | None = None
    ) -> dict[str, Any] | None:
        """Fine-tune, then evaluate the best checkpoint on the test identities."""
        from training.evaluate import run_evaluate
        from training.loop import run_training

        if self.left_s() <= 0:
            log(f"{name}: skipped (budget spent)")
            return None
        ep = epochs or self.a.epochs
        cfg = self.cfg(shards or self.shards, name, [f"train.epochs={ep}"] + extra)
        log(f"{name}: fine-tuning {ep} epochs ...")
        l0, t0 = load1(), time.perf_counter()
        summary = run_training(cfg, "finetune", runner="local")
        ev_cfg = cfg.model_copy(
            update={"evaluate": cfg.evaluate.model_copy(update={"splits": ("test",)})}
        )
        ev = run_evaluate(ev_cfg, summary["product"], output=str(self.runs / name / "eval"))
        wall = time.perf_counter() - t0
        seq = ev["protocols"]["sequence"]
        win = ev["protocols"].get("windows", {})
        res = {
            "name": name,
            "epochs": ep,
            "best_epoch": summary["best"].get("epoch"),
            "val_ccc_mean": summary["best"].get("val/ccc_mean"),
            "test_ccc_arousal": seq["arousal"]["ccc"],
            "test_ccc_valence": seq["valence"]["ccc"],
            "test_ccc_arousal_seq": seq["arousal"]["ccc_seq_mean"],
            "test_ccc_valence_seq": seq["valence"]["ccc_seq_mean"],
            "win_ccc_arousal": win.get("arousal", {}).get("ccc"),
            "win_ccc_valence": win.get("valence", {}).get("ccc"),
            "test_sequences": ev["sequences"],
            "wall_s": wall,
            "load": [l0, load1()],
        }
        res["test_ccc_mean"] = (res["test_ccc_arousal"] + res["test_ccc_valence"]) / 2
        log(
            f"  test CCC arousal {res['test_ccc_arousal']:.3f} valence "
            f"{res['test_ccc_valence']:.3f} ({wall:.0f} s)"
        )
        self.log.append(res)
        return res

    def pretrain(self, name: str, extra: list[str]) -> dict[str, Any] | None:
        """LiRA on the training identities' clips (audio, no labels)."""
        from training.loop import run_training

        if self.left_s() <= 0:
            log(f"{name}: skipped (budget spent)")
            return None
        ep = self.a.pretrain_epochs
        cfg = self.cfg(self.shards, name, LIRA + [f"train.epochs={ep}"] + extra)
        log(f"{name}: LiRA pretraining {ep} epochs ...")
        l0, t0 = load1(), time.perf_counter()
        summary = run_training(cfg, "pretrain", runner="local")
        from training.loop import read_metrics

        rec = read_metrics(cfg)
        losses = [r.get("train/loss") for r in rec]
        res = {
            "name": name,
            "epochs": ep,
            "product": summary["product"],
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "wall_s": time.perf_counter() - t0,
            "load": [l0, load1()],
        }
        log(f"  L1 {res['first_loss']} -> {res['last_loss']}")
        self.log.append(res)
        return res


# ---------------------------------------------------------------------------------------------
# Orchestrator


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = bench_parser(MODULE, __doc__ or "", "smaller corpus, fewer epochs")
    p.add_argument("--identities", type=int, default=None, help="people in the corpus")
    p.add_argument("--videos-per-identity", type=int, default=2)
    p.add_argument("--seconds", type=float, default=None, help="length of each video, s")
    p.add_argument("--size", default="240x320", help="HxW of the corpus videos")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="LiRA epochs")
    p.add_argument("--loss-epochs", type=int, default=None, help="epochs per loss config")
    p.add_argument("--fractions", default="0.05,0.2,1", help="label budgets")
    p.add_argument("--parts", default="ccc,labels,losses", help="which tables")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of training")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--budget-min", type=float, default=58, help="stop starting runs after")
    add_common_args(p, worker=False)
    a = p.parse_args(argv)
    q = a.quick
    a.identities = a.identities or (40 if q else 100)
    a.seconds = a.seconds or (4.0 if q else 6.0)
    a.epochs = a.epochs or (10 if q else 30)
    a.pretrain_epochs = a.pretrain_epochs or (5 if q else 10)
    a.loss_epochs = a.loss_epochs or (3 if q else 8)
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    cmd = begin(MODULE, argv, a.workdir)
    import logging

    logging.basicConfig(level=logging.WARNING)
    t_all = time.perf_counter()
    root, shards, manifest = corpus_and_shards(a)
    splits: dict[str, set[str]] = {}
    for m in manifest:
        splits.setdefault(m["split"], set()).add(m["identity"])
    run = Runner(a, root, shards)
    parts = {x.strip() for x in a.parts.split(",")}
    out: dict[str, Any] = {"splits": {k: len(v) for k, v in splits.items()}}

    if "ccc" in parts or "labels" in parts:
        out["scratch"] = run.finetune("scratch", [])
    if "ccc" in parts:
        ctl = shuffled_labels(shards, root / "shards_shuffled", a.seed)
        out["control"] = run.finetune("shuffled", [], shards=ctl)
    if "labels" in parts:
        lira = run.pretrain("lira", [])
        out["lira"] = lira
        out["lira_control"] = run.pretrain("lira_shift", ["pretrain.lira.control=shift"])
        curve = []
        for f in (float(x) for x in a.fractions.split(",")):
            sub, kept, total = (
                label_subset(shards, root / f"shards_{f:g}", f, a.seed)
                if f < 1
                else (shards, None, None)
            )
            row: dict[str, Any] = {"fraction": f, "kept": kept, "total": total}
            row["scratch"] = (
                out["scratch"] if f >= 1 else run.finetune(f"scratch_{f:g}", [], shards=sub)
            )
            if lira:
                row["lira"] = run.finetune(
                    f"lira_{f:g}", [f"model.encoder_checkpoint={lira['product']}"], shards=sub
                )
            curve.append(row)
        out["curve"] = curve
    if "losses" in parts:
        table = []
        for name in LOSSES:
            tag = "loss_" + hashlib.sha256(name.encode()).hexdigest()[:6]
            table.append((name, run.finetune(tag, loss_overrides(name), epochs=a.loss_epochs)))
        out["losses"] = table
    text = render(a, out, time.perf_counter() - t_all, run.runs)
    print(text)
    if not a.no_append:
        append_results("accuracy", cmd, text, a.results)
        log(f"appended to {a.results}")
    return 0


def _ccc_cells(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return ["-", "-", "-", "-", "-"]
    return [
        num(r["test_ccc_arousal"], 3),
        num(r["test_ccc_valence"], 3),
        num(r["test_ccc_mean"], 3),
        num(r["wall_s"], 0),
        fmt_load(*r["load"]),
    ]


def _curve_section(out: dict[str, Any]) -> list[str]:
    """The label-efficiency table (scratch vs LiRA init per label fraction) and the LiRA
    training note."""
    parts: list[str] = []
    rows = []
    for c in out["curve"]:
        lab = f"{100 * c['fraction']:g}%" + (
            f" ({c['kept']}/{c['total']} videos)" if c["kept"] else ""
        )
        for init in ("scratch", "lira"):
            r = c.get(init)
            rows.append([lab, init, *_ccc_cells(r)])
    parts += [
        "Label efficiency (fine-tuning on a fraction of the training videos' labels):",
        "",
    ]
    parts += [
        markdown_table(
            ["labels", "init", "CCC arousal", "CCC valence", "CCC mean", "wall s", "load1"],
            rows,
        ),
        "",
    ]
    li, lc = out.get("lira"), out.get("lira_control")
    if li:
        note = (
            f"LiRA ({li['epochs']} epochs, {' '.join(LIRA[:3])}, small Conformer): "
            f"training L1 {num(li['first_loss'], 3)} -> {num(li['last_loss'], 3)}"
        )
        if lc:
            note += (
                f"; the same on audio shifted out of sync (control): "
                f"{num(lc['first_loss'], 3)} -> {num(lc['last_loss'], 3)}"
            )
        parts += [note + ".", ""]
    return parts


def render(a: argparse.Namespace, out: dict[str, Any], total_s: float, runs: Path) -> str:
    """The tables as markdown."""
    h, w = a.size.split("x")
    parts = [
        f"Corpus: {a.identities} synthetic identities x {a.videos_per_identity} videos x "
        f"{a.seconds:g} s, {w}x{h}, talking with audio (`training.synth.make_corpus`, seed "
        f"{a.seed}); split by identity {out['splits']} (train/validation/test people). "
        "Shards by the preprocess job (retina5, detection every 5th frame). Model "
        f"`ssvaerr_tiny`, in-process training on {a.threads} CPU thread(s), recipe reduced "
        f"for a 2-core CPU: `{' '.join(TRAIN[1:])}`"
        + (f", overrides `{' '.join(a.sets)}`" if a.sets else "")
        + ". CCC = AVEC convention (all test sequences pooled), whole-sequence protocol, on "
        "the held-out test identities; best epoch by validation CCC.",
        "",
    ]
    headers = ["run", "epochs", "CCC arousal", "CCC valence", "CCC mean", "wall s", "load1"]
    if "scratch" in out or "control" in out:
        rows = []
        for label, key in (("from scratch", "scratch"), ("shuffled-label control", "control")):
            if key in out:
                r = out[key]
                rows.append([label, r["epochs"] if r else "-", *_ccc_cells(r)])
        parts += ["CCC on held-out identities (target: 0.90 or more):", ""]
        parts += [markdown_table(headers, rows), ""]
        s = out.get("scratch")
        if s and s.get("win_ccc_arousal") is not None:
            parts += [
                f"Same model through the batch job's sliding windows (200/100, blended): "
                f"arousal {s['win_ccc_arousal']:.3f}, valence {s['win_ccc_valence']:.3f}; "
                f"mean per-sequence CCC: arousal {s['test_ccc_arousal_seq']:.3f}, valence "
                f"{s['test_ccc_valence_seq']:.3f}.",
                "",
            ]
    if "curve" in out:
        parts += _curve_section(out)
    if "losses" in out:
        rows = []
        for name, r in out["losses"]:
            rows.append([name, r["epochs"] if r else "-", *_ccc_cells(r)])
        parts += [
            f"Loss configurations of the paper's table, from scratch, reduced schedule "
            f"({a.loss_epochs} epochs each):",
            "",
            markdown_table(["loss"] + headers[1:], rows),
            "",
        ]
    parts += [
        f"* Whole run: {total_s / 60:.1f} min (budget {a.budget_min:g} min: runs that would "
        f"start after it are shown as '-'). Run folders: `{runs}`.",
        "* `load1`: 1-minute load average at the start/end of each run (shared machine).",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
