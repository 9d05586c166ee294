"""`vaerr pretrain --config FILE`: a pretext task (LiRA, Video-BYOL, DINO) trains the encoder."""

from __future__ import annotations

import argparse
import sys

from jobs.cli_io import add_run_args, config_from_args, print_json_line, run_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `pretrain` subcommand."""
    p = sub.add_parser(
        "pretrain",
        help="Self-supervised pretraining of the encoder (LiRA, BYOL, DINO) on Ray Train.",
        description=(
            "Train the encoder (front-end + ResNet trunk) with pretrain.method on the clip "
            "shards data.shards (splits train.train_splits; LiRA needs audio features). Runs "
            "on Ray Train (train.num_workers DDP workers, train.use_gpu), checkpoints to "
            "train.storage_path/train.name (a rerun with the same name resumes), and writes "
            "the encoder checkpoint (pretrain.output, else RUN/encoder.pt) that finetune "
            "loads as model.encoder_checkpoint. Prints a JSON summary as the last line."
        ),
    )
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.loop import run_training

    args.overrides = run_overrides(args)
    cfg = config_from_args(args)
    summary = run_training(
        cfg, "pretrain", runner="local" if args.local else "ray", ray_address=args.ray_address
    )
    print_json_line(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.pretrain ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
