"""`vaerr render VIDEO_URI TIMELINES --output out.mp4`: the video with its faces annotated."""

from __future__ import annotations

import argparse
import logging

import pyarrow as pa

from jobs.common import add_config_args, config_from_args, print_json_line
from pipeline.query import open_timelines, read_timelines
from pipeline.render import read_annotations, render_video, video_candidates
from pipeline.status import FAILED, OK, status_record
from pipeline.video import VideoError

log = logging.getLogger("vaerr.render")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `render` subcommand."""
    p = sub.add_parser(
        "render",
        help="Annotated video: face boxes, ids, a valence/arousal circumplex per face.",
        description=(
            "Draw each face's box and track id and, beside it, a valence (x) / arousal (y) "
            "circle with the emotion words, the prediction as a red dot and the ground truth "
            "(--annotations, the generic CSV video,time_s,arousal,valence[,face]) as a green "
            "dot, plus the values and word as text. Encoded with PyAV (H.264 MP4 by "
            "default). Videos with a short side under 540 px are scaled up so the words can "
            "be read. Prints the status record (with output, width, height, fps) last; exit "
            "1 when the video cannot be decoded."
        ),
    )
    p.add_argument("video", metavar="VIDEO_URI", help="The video (path or fsspec URI).")
    p.add_argument("timelines", metavar="TIMELINES", help="A job's OUT or OUT/timelines/.")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help=".mp4/.mkv/.mov path/URI.")
    p.add_argument("--annotations", metavar="CSV", help="Ground truth, generic CSV format.")
    p.add_argument("--blur-faces", action="store_true", help="Blur every face box.")
    p.add_argument(
        "--video-id",
        metavar="ID_OR_URI",
        help="The video's rows in TIMELINES (default: found by the URI's id, the URI, its name).",
    )
    p.add_argument("--scale", type=float, help="Output size factor (default: short side >= 540).")
    p.add_argument("--fps", type=float, help="Output frame rate (default: the source's).")
    p.add_argument("--crf", type=int, default=20, help="x264 quality, 0..51, lower = better (20).")
    add_config_args(p)
    p.set_defaults(func=run)


def _rows_of(args: argparse.Namespace, storage: object) -> pa.Table:
    """The video's timeline rows, by --video-id or by the candidates of its URI."""
    dataset = open_timelines(args.timelines, storage)
    names = [args.video_id] if args.video_id else video_candidates(args.video)
    errors = []
    for name in names:
        try:
            return read_timelines(dataset, video=name)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(f"no timeline rows for {args.video} in {args.timelines}: {errors[-1]}")


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    cfg = config_from_args(args)
    rows = _rows_of(args, cfg.storage)
    ann = read_annotations(args.annotations, cfg.storage) if args.annotations else None
    vid, uri = rows["video_id"][0].as_py(), args.video
    try:
        out = render_video(
            args.video,
            rows,
            args.output,
            annotations=ann,
            blur_faces=args.blur_faces,
            scale=args.scale,
            fps=args.fps,
            storage=cfg.storage,
            emotion=cfg.emotion,
            crf=args.crf,
        )
    except VideoError as exc:
        print_json_line(status_record(vid, uri, FAILED, str(exc), 0, 0))
        return 1
    if ann is not None and not out["truth"]:
        log.warning(
            "%s: no rows of %s name this video; no green dots", args.video, args.annotations
        )
    record = status_record(vid, uri, OK, None, out["tracks"], out["frames"])
    extra = {k: out[k] for k in ("output", "width", "height", "fps", "truth")}
    print_json_line({**record, **extra})
    return 0
