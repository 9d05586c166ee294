"""`vaerr infer INPUT... --output OUT --checkpoint NAME|URI`: the main batch job."""

from __future__ import annotations

import argparse

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.storage import check_output

# Exit code when the run ended with environment failures still pending (a rerun retries them).
PENDING_EXIT = 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `infer` subcommand."""
    p = sub.add_parser(
        "infer",
        help="Score every face of every video: Parquet arousal/valence timelines.",
        description=(
            "List INPUTs (files, folders, globs, s3://bucket/prefix, or a manifest Parquet "
            "with a `uri` column; a path that exists is taken as named, whatever characters "
            "it holds, and only an INPUT that does not exist and holds *, ? or [ is a glob: "
            "quote it so the shell passes it on; a pattern that matches nothing gets a failed "
            "status row like a missing file; a folder without videos is an error; FIFOs, "
            "sockets and devices get a failed status row, unread), run the face stage and "
            "the SS-VAERR model on Ray Data, and write OUT/timelines/ (one row per track and "
            "output step), OUT/videos/ (one status row per input) and OUT/run.json (with the "
            "INPUTs as given, for `vaerr verify`). Videos already done with the same "
            "source version, checkpoint and config are skipped. A failure of the environment "
            "(storage unreachable, out of memory, a dead worker) stays pending: a rerun retries "
            "it, up to infer.max_attempts runs; a failure of the video itself is final. Prints "
            "a JSON summary as the last line (with `pending` and a `note` when some are). Exit "
            "0 when every input is accounted for (failed videos included), 3 when environment "
            "failures are still pending (rerun to retry them), other non-zero when the run "
            "could not complete."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="Videos, folders, URIs, or a quoted glob ('clips/*.mp4': used as a pattern only "
        "when no file or folder has that very name).",
    )
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="Output folder/URI.")
    p.add_argument(
        "--checkpoint", required=True, help="Checkpoint path/URI or a name in the registry file."
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster (auto, ray://HOST:10001). Default: $RAY_ADDRESS, else a new local Ray.",
    )
    p.add_argument(
        "--local", action="store_true", help="Run the stages in this process, without Ray."
    )
    p.add_argument("--force", action="store_true", help="Recompute videos already done.")
    p.add_argument(
        "--no-glob",
        dest="glob",
        action="store_false",
        help="Take every INPUT as a name, never as a glob pattern (one that does not exist "
        "gets a failed status row).",
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    cfg = config_from_args(args)
    check_output(args.output, folder=True)  # before any listing, loading or writing
    from pipeline.runner import run_inference  # torch and the face models: not for --help

    summary = run_inference(
        cfg,
        args.inputs,
        args.output,
        args.checkpoint,
        force=args.force,
        runner="local" if args.local else "ray",
        ray_address=args.ray_address,
        glob=args.glob,
    )
    print_json_line(summary)
    return PENDING_EXIT if summary.get("pending") else 0


if __name__ == "__main__":  # `python -m jobs.infer ...`: what `vaerr submit infer` runs
    import sys

    from jobs.cli import main

    sys.exit(main(["infer", *sys.argv[1:]]))
