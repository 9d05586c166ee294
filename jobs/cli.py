"""`vaerr`: the command line. Each subcommand lives in its own jobs/<name>.py module that
exposes `register(subparsers)`; this file only assembles them."""

from __future__ import annotations

import argparse
import importlib
import sys

from jobs.cli_io import setup_logging
from pipeline.errors import escape, exit_line, log_traceback

# Order is the order shown by `vaerr --help`.
COMMAND_MODULES = (
    "jobs.infer",
    "jobs.verify",
    "jobs.query",
    "jobs.plot",
    "jobs.render",
    "jobs.report",
    "jobs.faces",
    "jobs.model",
    "jobs.demo",
    "jobs.submit",
    "jobs.preprocess",
    "jobs.pretrain",
    "jobs.finetune",
    "jobs.evaluate",
    "jobs.paper",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subcommand per module in COMMAND_MODULES."""
    parser = argparse.ArgumentParser(
        prog="vaerr",
        description=(
            "Arousal/valence timelines for every face in a video collection (SS-VAERR). "
            "Run `vaerr COMMAND --help` for each command's options."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More logging.")
    parser.add_argument("-q", "--quiet", action="store_true", help="Warnings and errors only.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # one line naming the input and what to do (jobs/errors.py)
        log_traceback(exc)
        code, line = exit_line(args.command, exc)
        named = [str(v) for k in INPUT_ARGS for v in _as_list(getattr(args, k, None))]
        if named and not any(n in line for n in named) and "invalid config" not in line:
            line += f" [input: {escape(', '.join(named))[:300]}]"
        print(line, file=sys.stderr)
        return code


INPUT_ARGS = ("inputs", "video", "timelines", "output", "uri", "config")
"""Argument names whose values the error line names when its message does not."""


def _as_list(v: object) -> list[object]:
    return [] if v is None else list(v) if isinstance(v, list | tuple) else [v]


if __name__ == "__main__":
    sys.exit(main())
