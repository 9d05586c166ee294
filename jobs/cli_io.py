"""What the command line's entry points share: config and run flags, logging, the JSON status
line and terminal warnings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from pipeline.errors import escape
from pipeline.progress import set_verbosity
from schemas.config import VaerrConfig, load_config

if TYPE_CHECKING:
    import pyarrow as pa


def add_config_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    """Add `--config FILE` (repeatable: files merge in order) and repeatable `--set a.b=c`.
    several: `--config A B` takes several files at once (only for commands without
    positional arguments, which it would swallow)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        nargs="+" if several else None,
        action="extend" if several else "append",
        help="YAML config; every section is optional. Several files merge in order (later "
        "keys win), e.g. a dataset base then a row overlay: "
        + ("--config BASE ROW or " if several else "")
        + "--config BASE --config ROW.",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one config field, e.g. --set faces.landmarks.kind=retina5 (repeatable).",
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by pretrain and finetune."""
    p.add_argument("--name", default=None, help="Run name (else train.name).")
    p.add_argument("--ray-address", default=None, help="Ray cluster (auto, ray://HOST:10001).")
    p.add_argument("--local", action="store_true", help="Train in this process, without Ray.")
    add_config_args(p, several=True)


def run_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides with --name (pretrain, finetune) as train.name."""
    return [*args.overrides, *([f"train.name={args.name}"] if args.name else [])]


def config_from_args(args: argparse.Namespace) -> VaerrConfig:
    """Resolve the config of a parsed command line (file, then overrides)."""
    return load_config(args.config, args.overrides)


TIMELINES_HELP = "A job's output folder OUT or OUT/timelines/ (local path or any fsspec URI)."

QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "fsspec", "urllib3", "s3transfer")


class OneLineFormatter(logging.Formatter):
    """Every log record on one line: newlines and control characters in the message (a file
    named `a\nb.mp4`, terminal escapes) are escaped; tracebacks (-vv) keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape(super().formatMessage(record))


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr so stdout stays machine-readable (tables, the JSON status line)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if type(handler.formatter) is logging.Formatter:  # ours, not a test's capture handler
            handler.setFormatter(OneLineFormatter(handler.formatter._fmt))
    # Storage clients log request headers (the access key id among them) at DEBUG: keep them
    # at WARNING whatever the verbosity, so credentials never reach a log.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    set_verbosity(verbose)  # progress bars and epoch lines: off with -q, more with -v


def print_json_line(record: dict[str, Any]) -> None:
    """Print one JSON object as the command's last stdout line."""
    print(json.dumps(record, default=str), flush=True)


def warn_untrained(table: pa.Table) -> None:
    """Warn (log) when timelines come from an untrained checkpoint."""
    if "untrained" in table.column_names and any(table["untrained"].to_pylist()):
        logging.getLogger("vaerr.query").warning(
            "these timelines come from an UNTRAINED checkpoint: values are not emotions"
        )
