"""`vaerr demo`: train ssvaerr_tiny on a synthetic corpus, then run the batch job on unseen
synthetic videos and score the timelines against the truth (what `make demo` runs)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from jobs.cli_io import add_config_args, print_json_line
from pipeline.progress import verbosity
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
            "preprocess`, fine-tune ssvaerr_tiny with `vaerr finetune` (Ray Train, one "
            "worker), run `vaerr infer` with the trained checkpoint on synthetic videos of "
            "people it never saw, and print the CCC of the timelines against the rendered "
            "truth, where the tables are and how to query them. A few minutes on a 2-core "
            f"CPU. Defaults come from {DEMO_CONFIG.name}; --config/--set override them."
        ),
    )
    p.add_argument("--output", "-o", default="demo_out", help="Output folder.")
    p.add_argument(
        "--videos",
        type=int,
        default=12,
        help="Unseen videos (people) to score (12: enough for a stable figure and interval).",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="Length of each unseen video, s.")
    p.add_argument(
        "--seed", type=int, default=7, help="Seeds the people, the weights and the clip order."
    )
    p.add_argument(
        "--identities",
        type=int,
        default=320,
        help="People in the corpus (--validation-people validate, the rest train): more "
        "people, better on unseen ones.",
    )
    p.add_argument(
        "--validation-people",
        type=int,
        default=None,
        help="Corpus people kept for validation (choosing the best epoch); default a third "
        "of the people, at most 40.",
    )
    p.add_argument(
        "--videos-per-identity",
        type=int,
        default=1,
        help="Corpus videos of each person (120 people x 1 generalised better than 60 x 2 for "
        "the same frames: bench/RESULTS.md).",
    )
    p.add_argument(
        "--train-seconds",
        type=float,
        default=0.44,
        help="Length of corpus videos, s (11 frames: the tracker keeps the frames between two "
        "detections, every 10th; one 8-frame training clip each: more people, not more frames "
        "of one, is what generalises).",
    )
    p.add_argument("--local", action="store_true", help="In-process runners instead of Ray.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.demo import QUIET_MINUTES, estimated_minutes, run_demo

    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    if verbosity() >= 0:
        print(
            f"vaerr demo: about {estimated_minutes():.0f} minutes here ({QUIET_MINUTES:g} on a "
            "quiet 2-core CPU; scaled by this machine's cores and load): render a synthetic "
            "corpus, preprocess, fine-tune with one line per epoch, score unseen people, write "
            "a report.",
            file=sys.stderr,
            flush=True,
        )
    summary = run_demo(
        cfg,
        args.output,
        args.videos,
        args.seconds,
        seed=args.seed,
        runner="local" if args.local else "ray",
        identities=args.identities,
        videos_per_identity=args.videos_per_identity,
        validation_people=args.validation_people,
        train_seconds=args.train_seconds,
    )
    from pipeline.outpaths import OutPaths

    out = Path(args.output) / "run"
    paths = OutPaths(str(out))
    tr = summary["training"]
    print(
        f"\ntrained checkpoint: {tr['checkpoint']} (best epoch {tr['best_epoch']} of "
        f"{tr['epochs']}; validation CCC arousal {_f(tr['val_ccc_arousal'])}, valence "
        f"{_f(tr['val_ccc_valence'])}; per-epoch metrics in {tr['run']}/metrics.jsonl)"
    )
    cc, ci = summary.get("ccc", {}), summary.get("ccc_interval", {})
    print(
        f"{summary.get('unseen_videos', 0)} unseen people, timelines vs rendered truth "
        f"(seed {args.seed}): CCC arousal {_f(cc.get('arousal'))}{_ci(ci.get('arousal'))}, "
        f"valence {_f(cc.get('valence'))}{_ci(ci.get('valence'))}"
    )
    print(f"timelines: {paths.timelines}/   status rows: {paths.videos}/   run: {paths.run_record}")
    print(f"report: {summary['report']}   (one HTML file: open it in a browser)")
    vaerr = _vaerr()
    first = sorted((Path(args.output) / "videos").glob("*.mp4"))
    name = first[0].name if first else "synthetic_00.mp4"
    stem = Path(name).stem
    print("explore the results:")
    print(f"  {vaerr} query happy {out}")
    print(f"  {vaerr} query spikes {out} --output {Path(args.output) / 'spikes.csv'}")
    print(f"  {vaerr} plot {out} --video {name} --output {Path(args.output) / (stem + '.png')}")
    print(
        f"  {vaerr} render {Path(args.output) / 'videos' / name} {out} "
        f"--output {Path(args.output) / (stem + '_annotated.mp4')}"
    )
    if summary.get("untrained"):
        print("NOTE: the checkpoint is UNTRAINED: values are not predictions of emotion.")
    if summary.get("training_data") == "synthetic":
        print("NOTE: the model was trained on synthetic (rendered) faces only: a demo model.")
    print_json_line(summary)
    return 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(interval: tuple[float, float] | None) -> str:
    if not interval:
        return ""
    return f" (95% interval over the people {interval[0]:.2f} to {interval[1]:.2f})"


def _vaerr() -> str:
    """How to call vaerr from here: on PATH, else the script that is running, else -m."""
    if shutil.which("vaerr"):
        return "vaerr"
    if Path(sys.argv[0]).name == "vaerr":
        return os.path.relpath(sys.argv[0])
    return f"{os.path.relpath(sys.executable)} -m jobs.cli"
