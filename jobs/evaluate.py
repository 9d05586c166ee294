"""`vaerr evaluate --checkpoint URI --config FILE`: both protocols, to Parquet and JSON."""

from __future__ import annotations

import argparse
import sys

from jobs.cli_io import add_config_args, config_from_args, print_json_line


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    p = sub.add_parser(
        "evaluate",
        help="Score a checkpoint on labelled shards: whole sequences and the batch job's windows.",
        description=(
            "Score CHECKPOINT on the labelled sequences of evaluate.splits in data.shards by "
            "two protocols: whole sequences (the paper's) and the batch job's sliding windows "
            "(infer.window_frames / hop_frames, blended as in the timelines: what users get). "
            "Reports CCC (pooled over all sequences, the AVEC convention, and the mean per "
            "sequence), Pearson and RMSE per target to OUT/summary.json, OUT/metrics.parquet, "
            "OUT/per_sequence.parquet and OUT/predictions.parquet. Prints the summary as the "
            "last line."
        ),
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="Checkpoint path/URI or registry name (else train.storage_path/train.name/best.pt).",
    )
    p.add_argument("--output", "-o", default=None, help="Report folder/URI (else evaluate.output).")
    add_config_args(p, several=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from pipeline.storage import join
    from training.evaluate import run_evaluate
    from training.loop import resolve_paths, run_dir

    cfg = resolve_paths(config_from_args(args))
    ckpt = args.checkpoint or join(run_dir(cfg), "best.pt")
    summary = run_evaluate(cfg, ckpt, args.output)
    print_json_line(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.evaluate ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
