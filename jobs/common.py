"""Helpers every entry point shares: config flags, logging, the status line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pipeline.progress import set_verbosity
from schemas.config import VaerrConfig, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Add `--config FILE` and repeatable `--set a.b=c` to a subcommand."""
    p.add_argument("--config", metavar="FILE", help="YAML config; every section is optional.")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config field, e.g. --set faces.landmarks.kind=retina5 (repeatable).",
    )


def config_from_args(args: argparse.Namespace) -> VaerrConfig:
    """Resolve the config of a parsed command line (file, then overrides)."""
    return load_config(args.config, args.overrides)


QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "fsspec", "urllib3", "s3transfer")


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr so stdout stays machine-readable (tables, the JSON status line)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Storage clients log request headers (the access key id among them) at DEBUG: keep them
    # at WARNING whatever the verbosity, so credentials never reach a log.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    set_verbosity(verbose)  # progress bars and epoch lines: off with -q, more with -v


def print_json_line(record: dict[str, Any]) -> None:
    """Print one JSON object as the command's last stdout line."""
    print(json.dumps(record, default=str), flush=True)
