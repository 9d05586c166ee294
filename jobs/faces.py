"""`vaerr faces VIDEO_URI --output DIR`: tracked, aligned face clips of one video."""

from __future__ import annotations

import argparse

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.faces.export import export_faces
from pipeline.status import FAILED
from pipeline.storage import check_output


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `faces` subcommand."""
    p = sub.add_parser(
        "faces",
        help="Detect, track and align every face of one video.",
        description=(
            "Decode VIDEO_URI (local path, file://, s3://...), detect faces with RetinaFace, "
            "place landmarks (fan68 or retina5), link them into tracks and write aligned "
            "96x96 gray crops. Writes DIR/tracks.parquet (one row per track and frame), "
            "DIR/clips.parquet (the crops) and DIR/config.yaml; prints the status record "
            "as the last line. Exit 0 for ok and no_face, 1 for failed."
        ),
    )
    p.add_argument("video", metavar="VIDEO_URI", help="Video path or fsspec URI.")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="Output folder or URI.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    cfg = config_from_args(args)
    check_output(args.output, folder=True)
    from pipeline.faces.extract import FacePipeline  # torch and the models: not for --help

    record = export_faces(FacePipeline(cfg), args.video, args.output)
    print_json_line(record)
    return 1 if record["status"] == FAILED else 0
