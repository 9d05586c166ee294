"""`vaerr query happy|spikes|sql TIMELINES ...` and `vaerr plot TIMELINES ...`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from jobs.common import add_config_args, config_from_args, print_json_line
from pipeline.events import COLUMNS, find_happy, find_spikes
from pipeline.plot import plot_timelines
from pipeline.query import (
    SqlLimits,
    format_table,
    open_timelines,
    read_timelines,
    run_sql,
    write_table,
)
from pipeline.storage import check_output, open_uri
from schemas.query import HappyConfig, SpikeConfig
from schemas.tables import EVENTS

log = logging.getLogger("vaerr.query")

TIMELINES_HELP = "A job's output folder OUT or OUT/timelines/ (local path or any fsspec URI)."
SHOWN = ("uri", "video_id", "kind", "track_ids", "start_s", "end_s", "peak_arousal",
         "peak_valence", "mean_arousal", "mean_valence", "score")  # fmt: skip


def add_section_args(p: argparse.ArgumentParser, section: type[BaseModel]) -> None:
    """One `--field-name` flag per field of a config section; help is the field's description
    and its default, and an omitted flag keeps the section's default."""
    for name, field in section.model_fields.items():
        kind = field.annotation if field.annotation in (int, float) else str
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"{field.description} (default {field.default})",
        )


def section_from_args(args: argparse.Namespace, section: type[BaseModel]) -> Any:
    """The section with the flags that were given."""
    given = {k: getattr(args, k) for k in section.model_fields if getattr(args, k) is not None}
    return section(**given)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", "-o", metavar="FILE", help="Also write all rows to .parquet, .csv or .json."
    )
    p.add_argument("--limit", type=int, default=20, help="Rows shown on the terminal (20).")
    add_config_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `query` (happy, spikes, sql) and `plot` subcommands."""
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
        type=float,
        default=limits.timeout_s,
        help=f"Stop the query after this many seconds ({limits.timeout_s:g}).",
    )
    sql.add_argument(
        "--memory-mb",
        type=int,
        default=limits.memory_mb,
        help=f"DuckDB memory limit, MiB ({limits.memory_mb}).",
    )
    _add_output_args(sql)
    sql.set_defaults(func=run_sql_command)

    plot = sub.add_parser(
        "plot",
        help="PNG of one video's arousal and valence per face, episodes shaded.",
        description=(
            "Plot arousal and valence over time, one panel per face track, with happy "
            "episodes (green) and spikes (red) shaded and the emotion words along the top. "
            "Episodes are found with the default thresholds unless --events gives a Parquet "
            "file written by `vaerr query ... --output`."
        ),
    )
    plot.add_argument("timelines", metavar="TIMELINES", help=TIMELINES_HELP)
    plot.add_argument(
        "--video", metavar="ID_OR_URI", help="video_id, uri or file name (needed if several)."
    )
    plot.add_argument("--output", "-o", required=True, metavar="PNG", help="Image path or URI.")
    plot.add_argument("--events", metavar="PARQUET", help="Episodes to shade (EVENTS table).")
    add_config_args(plot)
    plot.set_defaults(func=run_plot)


def _warn_untrained(table: pa.Table) -> None:
    if "untrained" in table.column_names and any(table["untrained"].to_pylist()):
        log.warning("these timelines come from an UNTRAINED checkpoint: values are not emotions")


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
    if args.output:
        check_output(args.output)
    table = read_timelines(args.timelines, cfg.storage, columns=[*COLUMNS, "untrained"])
    _warn_untrained(table)
    if kind == "happy":
        events = find_happy(table, section_from_args(args, HappyConfig))
    else:
        events = find_spikes(table, section_from_args(args, SpikeConfig))
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


def read_events(uri: str, storage: object) -> pa.Table:
    """An EVENTS table written by `vaerr query ... --output x.parquet`; ValueError naming the
    file when it is not Parquet or lacks the event columns."""
    try:
        with open_uri(uri, "rb", storage) as f:
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(f"--events {uri}: no such file") from None
        raise ValueError(
            f"--events {uri} is not a Parquet file ({type(exc).__name__}); give the "
            "file written by `vaerr query happy|spikes --output events.parquet`"
        ) from None
    missing = [c for c in ("video_id", "track_ids", "start_s", "end_s", "kind")
               if c not in table.column_names]  # fmt: skip
    if missing:
        raise ValueError(
            f"--events {uri} is not an events table (no column {missing[0]!r}); give the "
            "file written by `vaerr query happy|spikes --output events.parquet`"
        )
    try:
        return table.select(EVENTS.names).cast(EVENTS)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"--events {uri}: columns do not match the events table ({exc})") from None


def run_plot(args: argparse.Namespace) -> int:
    """Parse -> build -> run: `vaerr plot`."""
    cfg = config_from_args(args)
    check_output(args.output)
    table = read_timelines(args.timelines, cfg.storage, video=args.video)
    if table.num_rows == 0:
        raise ValueError(f"no timeline rows in {args.timelines}")
    _warn_untrained(table)
    if args.events:
        events = read_events(args.events, cfg.storage)
    else:
        events = pa.concat_tables([find_happy(table), find_spikes(table)])
    plot_timelines(table, events, args.output, cfg.storage, cfg.emotion)
    print_json_line(
        {
            "video_id": table["video_id"][0].as_py(),
            "uri": table["uri"][0].as_py(),
            "tracks": len(set(table["track_id"].to_pylist())),
            "events": events.num_rows,
            "output": args.output,
        }
    )
    return 0
