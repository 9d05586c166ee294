"""`vaerr report OUT --output report.html`: one self-contained HTML page for a finished job."""

from __future__ import annotations

import argparse

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.outputs.report import ReportOptions, write_report


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand."""
    d = ReportOptions()
    p = sub.add_parser(
        "report",
        help="One self-contained HTML page: run summary, top episodes, per-video timelines.",
        description=(
            "Write one HTML file (no network needed to open it: images inline) for a "
            "finished job, local or on S3: the run summary (videos by status with failure "
            "reasons, faces, hours, frames/s, model, config hash), the top happy episodes and "
            "distress spikes (vaerr query's detectors and defaults) and, per video, the "
            "arousal/valence figure of every face with the episodes shaded and, for local or "
            "http(s) mp4/webm sources, the video with links that seek to each episode. "
            f"Capped at {d.max_videos} videos and {d.max_events} episodes of each kind so a "
            "job of any size gives a page of a few MB; the rest: vaerr query ... --output, "
            "vaerr plot. The last stdout line is a JSON summary."
        ),
    )
    p.add_argument("out", metavar="OUT", help="The job's output folder (local path or URI).")
    p.add_argument("--output", "-o", required=True, metavar="HTML", help="Report path or URI.")
    p.add_argument(
        "--stills",
        action="store_true",
        help="A small still of each face at each episode's peak, read from the source video "
        "(off by default: faces are personal data).",
    )
    p.add_argument("--blur-faces", action="store_true", help="Blur the faces in the stills.")
    p.add_argument(
        "--max-videos",
        type=int,
        default=d.max_videos,
        help=f"Per-video sections, best episodes first ({d.max_videos}).",
    )
    p.add_argument(
        "--max-events",
        type=int,
        default=d.max_events,
        help=f"Episodes of each kind in the top tables ({d.max_events}).",
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    cfg = config_from_args(args)
    options = ReportOptions(
        max_videos=args.max_videos,
        max_events=args.max_events,
        stills=args.stills,
        blur_faces=args.blur_faces,
    )
    facts = write_report(args.out, args.output, options, cfg.storage, cfg.emotion)
    keys = ("videos", "ok", "no_face", "failed", "faces", "happy", "spikes", "videos_shown")
    print_json_line({**{k: facts[k] for k in keys}, "bytes": facts["bytes"], "output": args.output})
    return 0
