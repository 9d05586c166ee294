"""`vaerr demo`: train ssvaerr_tiny on a synthetic corpus, then run the batch job on unseen
synthetic videos and score the timelines against the truth (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.common import add_config_args, print_json_line
from schemas.config import load_config

DEMO_CONFIG = Path(__file__).parent / "configs" / "synthetic.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser(
        "demo",
        help="Train on synthetic faces, run the batch job on unseen ones, score it (local Ray).",
        description=(
            "Render a synthetic corpus of talking faces whose expression follows known "
            "arousal/valence (people split train/validation), shard it with `vaerr "
            "preprocess`, fine-tune ssvaerr_tiny with `vaerr finetune` (Ray Train, 2 CPU "
            "workers), run `vaerr infer` with the trained checkpoint on synthetic videos of "
            "people it never saw, and print the CCC of the timelines against the rendered "
            "truth, where the tables are and how to query them. A few minutes on a 2-core "
            f"CPU. Defaults come from {DEMO_CONFIG.name}; --config/--set override them."
        ),
    )
    p.add_argument("--output", "-o", default="demo_out", help="Output folder.")
    p.add_argument("--videos", type=int, default=3, help="Unseen videos to score.")
    p.add_argument("--seconds", type=float, default=8.0, help="Length of each unseen video, s.")
    p.add_argument(
        "--identities",
        type=int,
        default=60,
        help="People in the corpus (2/3 train, 1/3 validate): more people, better on unseen ones.",
    )
    p.add_argument(
        "--videos-per-identity", type=int, default=2, help="Corpus videos of each person."
    )
    p.add_argument("--train-seconds", type=float, default=2.0, help="Length of corpus videos, s.")
    p.add_argument("--local", action="store_true", help="In-process runners instead of Ray.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.demo import run_demo

    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    summary = run_demo(
        cfg,
        args.output,
        args.videos,
        args.seconds,
        runner="local" if args.local else "ray",
        identities=args.identities,
        videos_per_identity=args.videos_per_identity,
        train_seconds=args.train_seconds,
    )
    out = Path(args.output) / "run"
    tr = summary["training"]
    print(
        f"\ntrained checkpoint: {tr['checkpoint']} (best epoch {tr['best_epoch']} of "
        f"{tr['epochs']}; validation CCC arousal {_f(tr['val_ccc_arousal'])}, valence "
        f"{_f(tr['val_ccc_valence'])}; per-epoch metrics in {tr['run']}/metrics.jsonl)"
    )
    cc = summary.get("ccc", {})
    print(
        f"unseen people, timelines vs rendered truth: CCC arousal {_f(cc.get('arousal'))}, "
        f"valence {_f(cc.get('valence'))}"
    )
    print(
        f"timelines: {out / 'timelines'}/   status rows: {out / 'videos'}/   "
        f"run: {out / 'run.json'}"
    )
    print(
        'query them, e.g.:\n  .venv/bin/python -c "import pyarrow.parquet as pq; '
        f"print(pq.read_table('{out}/timelines').to_pandas().head())\""
    )
    if summary.get("untrained"):
        print("NOTE: the checkpoint is UNTRAINED: values are not predictions of emotion.")
    print_json_line(summary)
    return 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
