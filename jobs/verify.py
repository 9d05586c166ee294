"""`vaerr verify OUT`: check a job's outputs; exit 1 listing each violation."""

from __future__ import annotations

import argparse

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.outputs.verify import verify_output


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `verify` subcommand."""
    p = sub.add_parser(
        "verify",
        help="Check a job's outputs: every input once, no duplicates, schemas match.",
        description=(
            "Check the whole OUT (a `vaerr infer` output folder or URI): every file readable; "
            "every input of the last run has exactly one status row; tables match schemas/; "
            "every status row and timeline agrees with one model_id and config_hash (the run "
            "record's) and the last run completed; no environment failure pending a rerun; no "
            "duplicate (video_id, track_id, time_s); timelines only for ok videos; values "
            "finite in [-1, 1]. Prints each violation; exit 0 when sound, 1 otherwise."
        ),
    )
    p.add_argument("output", metavar="OUT", help="The job's output folder or URI.")
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="Accept an OUT built on purpose from several runs (models, configs, or a run "
        "that did not complete); every other check still applies.",
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    problems = verify_output(args.output, config_from_args(args), allow_mixed=args.allow_mixed)
    for line in problems:
        print(f"VIOLATION: {line}")
    print_json_line({"output": args.output, "ok": not problems, "violations": len(problems)})
    return 1 if problems else 0
