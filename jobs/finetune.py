"""`vaerr finetune --config FILE`: train SS-VAERR on labelled clip shards (Ray Train)."""

from __future__ import annotations

import argparse
import sys

from jobs.cli_io import add_run_args, config_from_args, print_json_line, run_overrides


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    p = sub.add_parser(
        "finetune",
        help="Fine-tune SS-VAERR on labelled shards; best checkpoint by validation CCC.",
        description=(
            "Train model.arch from scratch or from a pretext encoder "
            "(model.encoder_checkpoint), in model.finetune mode (full, frozen_frontend, "
            "frozen_encoder), with the composite loss (loss.*), augmentations (augment.*) "
            "and the recipe in train.* (AdamW 3e-4, weight decay 1e-2, cosine per epoch, "
            "batch 5, random 4 s clips, 3 per file per epoch, seed 1). Validates on whole "
            "sequences every epoch (CCC, AVEC convention) and keeps the best by the mean of "
            "arousal and valence CCC as RUN/best.pt, a checkpoint `vaerr infer` loads. "
            "RUN = train.storage_path/train.name; a rerun with the same name resumes. "
            "Prints a JSON summary as the last line."
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
        cfg, "finetune", runner="local" if args.local else "ray", ray_address=args.ray_address
    )
    print_json_line(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.finetune ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["finetune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
