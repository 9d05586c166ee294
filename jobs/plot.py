"""`vaerr plot TIMELINES --output PNG`: one video's arousal and valence per face."""

from __future__ import annotations

import argparse
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli_io import (
    TIMELINES_HELP,
    add_config_args,
    config_from_args,
    print_json_line,
    warn_untrained,
)
from pipeline.outputs.events import find_happy, find_spikes
from pipeline.outputs.plot import plot_timelines
from pipeline.outputs.query import read_timelines
from pipeline.storage import check_output, open_uri
from schemas.tables import EVENTS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `plot` subcommand."""
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
    warn_untrained(table)
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


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.plot ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["plot", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
