"""`vaerr preprocess --config FILE`: videos + annotations (+ audio) -> clip shards, on Ray Data."""

from __future__ import annotations

import argparse
import sys

from jobs.cli_io import add_config_args, config_from_args, print_json_line


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `preprocess` subcommand."""
    p = sub.add_parser(
        "preprocess",
        help="Turn a dataset's videos and annotations into training clip shards.",
        description=(
            "Read the dataset named by data.dataset (generic CSV, sewa, avec2019, recola, "
            "affwild2, afewva, lrs3) from data.videos / data.labels, run the batch job's face "
            "pipeline on every video (Ray Data actors), keep the labelled person's track "
            "(data.face_rule), resample the labels to the frame times, add per-frame audio "
            "features, and write data.shards/{clips,sequences,videos}/<video_id>.parquet. "
            "Dataset videos are taken as named, never as glob patterns (`clip[1].mp4` is that "
            "file); a missing one, or a FIFO, socket or device (never read), gets a failed "
            "status row. Temporary files an interrupted run left under data.shards are removed. "
            "Resumable: videos already sharded with the same source and config are skipped. "
            "Prints a JSON summary as the last line."
        ),
    )
    p.add_argument("--output", "-o", default=None, help="Shards folder/URI (else data.shards).")
    p.add_argument("--ray-address", default=None, help="Ray cluster (auto, ray://HOST:10001).")
    p.add_argument("--local", action="store_true", help="Run in this process, without Ray.")
    p.add_argument("--force", action="store_true", help="Re-shard videos already done.")
    add_config_args(p, several=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.preprocess import run_preprocess

    if args.output:
        args.overrides = [*args.overrides, f"data.shards={args.output}"]
    cfg = config_from_args(args)
    summary = run_preprocess(
        cfg,
        force=args.force,
        runner="local" if args.local else "ray",
        ray_address=args.ray_address,
    )
    print_json_line(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.preprocess ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["preprocess", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
