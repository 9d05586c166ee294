"""`vaerr query happy|spikes|sql TIMELINES ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from jobs.cli_io import (
    TIMELINES_HELP,
    add_config_args,
    config_from_args,
    print_json_line,
    warn_untrained,
)
from jobs.section_args import add_section_args, section_from_args
from pipeline.outputs.events import COLUMNS, find_happy, find_spikes
from pipeline.outputs.query import (
    SqlLimits,
    format_table,
    open_timelines,
    read_timelines,
    run_sql,
    write_table,
)
from pipeline.storage import check_output
from schemas.query import HappyConfig, SpikeConfig

log = logging.getLogger("vaerr.query")

# Bounds of the options (a user never needs more; they stop typos such as 1e9).
MAX_SHOWN = 100_000
MAX_TIMEOUT_S = 86_400.0
MAX_MEMORY_MB = 1 << 20

SHOWN = ("uri", "video_id", "kind", "track_ids", "start_s", "end_s", "peak_arousal",
         "peak_valence", "mean_arousal", "mean_valence", "score")  # fmt: skip


def bounded(kind: type, lo: float, hi: float) -> Callable[[str], Any]:
    """An argparse type: `kind` (int or float) in [lo, hi]; NaN is "not a number". The error
    names the limit (argparse: exit 2)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (NaN)")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo:g}, {hi:g}]")
        return value

    return parse


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", "-o", metavar="FILE", help="Also write all rows to .parquet, .csv or .json."
    )
    p.add_argument(
        "--limit",
        type=bounded(int, 0, MAX_SHOWN),
        default=20,
        help=f"Rows shown on the terminal (20; at most {MAX_SHOWN}: write more with --output).",
    )
    add_config_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `query` subcommand (happy, spikes, sql)."""
    q = sub.add_parser(
        "query",
        help="Find happy episodes or distress spikes, or run read-only SQL over timelines.",
        description=(
            "Read a job's timelines (local or any fsspec URI) and print a ranked table; "
            "--output writes every row to Parquet, CSV or JSON. The last stdout line is a "
            "JSON summary."
        ),
    )
    qsub = q.add_subparsers(dest="query", required=True, metavar="QUERY")
    happy = qsub.add_parser(
        "happy",
        help="Sustained positive episodes, optionally several faces at once.",
        description=HappyConfig.__doc__,
    )
    happy.add_argument("timelines", metavar="TIMELINES", help=TIMELINES_HELP)
    add_section_args(happy, HappyConfig)
    _add_output_args(happy)
    happy.set_defaults(func=run_happy)

    spikes = qsub.add_parser(
        "spikes",
        help="Abrupt high-arousal, negative-valence onsets (reactions, not their cause).",
        description=SpikeConfig.__doc__,
    )
    spikes.add_argument("timelines", metavar="TIMELINES", help=TIMELINES_HELP)
    add_section_args(spikes, SpikeConfig)
    _add_output_args(spikes)
    spikes.set_defaults(func=run_spikes)

    sql = qsub.add_parser(
        "sql",
        help="One read-only SELECT over the view `timelines` (DuckDB).",
        description=(
            "Run one read-only SELECT/WITH statement over the timelines, seen as the view "
            "`timelines` (columns of the timelines table). Statements that write, and "
            "functions that read files (read_parquet, read_csv, glob...), are refused."
        ),
    )
    sql.add_argument("timelines", metavar="TIMELINES", help=TIMELINES_HELP)
    sql.add_argument("sql", metavar="SQL", help='e.g. "SELECT uri, avg(valence) FROM timelines '
                     'GROUP BY uri ORDER BY 2 DESC"')  # fmt: skip
    limits = SqlLimits()
    sql.add_argument(
        "--timeout-s",
        type=bounded(float, 0.001, MAX_TIMEOUT_S),
        default=limits.timeout_s,
        help=f"Stop the query after this many seconds ({limits.timeout_s:g}; at most "
        f"{MAX_TIMEOUT_S:g}: a day).",
    )
    sql.add_argument(
        "--memory-mb",
        type=bounded(int, 16, MAX_MEMORY_MB),
        default=limits.memory_mb,
        help=f"DuckDB memory limit, MiB ({limits.memory_mb}; 16 to {MAX_MEMORY_MB}: 1 TiB).",
    )
    _add_output_args(sql)
    sql.set_defaults(func=run_sql_command)


def _report(
    args: argparse.Namespace, table: pa.Table, summary: dict[str, Any], shown: pa.Table
) -> int:
    """Print `shown` (the first --limit rows), write all of `table` to --output, print the
    JSON summary line."""
    cfg = config_from_args(args)
    print(format_table(shown, args.limit))
    if args.output:
        write_table(table, args.output, cfg.storage)
    print_json_line({**summary, "rows": table.num_rows, "output": args.output})
    return 0


def _events_command(args: argparse.Namespace, kind: str) -> int:
    cfg = config_from_args(args)
    # the detector's settings first: a bad option fails before any read
    settings = section_from_args(args, HappyConfig if kind == "happy" else SpikeConfig)
    if args.output:
        check_output(args.output)
    table = read_timelines(args.timelines, cfg.storage, columns=[*COLUMNS, "untrained"])
    warn_untrained(table)
    find = find_happy if kind == "happy" else find_spikes
    events = find(table, settings)
    videos = len(set(table["video_id"].to_pylist()))
    shown = events.select([c for c in SHOWN if c in events.column_names])
    return _report(args, events, {"kind": kind, "videos": videos}, shown)


def run_happy(args: argparse.Namespace) -> int:
    """Parse -> build -> run: `vaerr query happy`."""
    return _events_command(args, "happy")


def run_spikes(args: argparse.Namespace) -> int:
    """Parse -> build -> run: `vaerr query spikes`."""
    return _events_command(args, "spike")


def run_sql_command(args: argparse.Namespace) -> int:
    """Parse -> build -> run: `vaerr query sql`."""
    cfg = config_from_args(args)
    if not (0 < args.timeout_s <= 3600) or not (64 <= args.memory_mb <= 1 << 20):
        raise ValueError("--timeout-s must be in (0, 3600] and --memory-mb in [64, 1048576]")
    limits = SqlLimits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)
    if args.output:
        check_output(args.output)
    result = run_sql(args.sql, open_timelines(args.timelines, cfg.storage), limits)
    return _report(args, result, {"query": "sql", "columns": result.column_names}, result)
