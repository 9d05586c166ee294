"""`vaerr render VIDEO_URI TIMELINES --output out.mp4`: the video with its faces annotated."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import pyarrow as pa

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.errors import is_storage_outage, status_reason
from pipeline.ids import video_id
from pipeline.query import open_timelines, read_timelines
from pipeline.render import read_annotations, render_video, video_candidates
from pipeline.status import FAILED, OK, status_record
from pipeline.storage import check_output
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
    p.add_argument(
        "--scale",
        type=_bounded(float, 0.0, MAX_SCALE, "--scale", low_open=True),
        help=f"Output size factor in (0, {MAX_SCALE:g}] (default: short side >= 540).",
    )
    p.add_argument(
        "--fps",
        type=_bounded(float, 0.0, MAX_FPS, "--fps", low_open=True),
        help=f"Output frame rate in (0, {MAX_FPS:g}] (default: the source's).",
    )
    p.add_argument(
        "--crf",
        type=_bounded(int, 0, 51, "--crf"),
        default=20,
        help="x264 quality, 0..51, lower = better (20).",
    )
    add_config_args(p)
    p.set_defaults(func=run)


MAX_SCALE = 8.0
"""Largest --scale: 8x a 540p video is already past 4K."""
MAX_FPS = 240.0
"""Largest --fps."""


def _bounded(kind: type, low: float, high: float, flag: str, low_open: bool = False) -> Any:
    """An argparse type: `kind(text)` inside [low, high] ((low, high] with `low_open`), else a
    usage error (exit 2) naming the flag and its range."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} needs a {kind.__name__}, not {text!r}"
            ) from None
        ok = (v > low if low_open else v >= low) and v <= high and v == v
        if not ok:
            lo = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"{flag} must be in {lo}{low:g}, {high:g}], not {text}"
            )
        return v

    return parse


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
    check_output(args.output)
    uri = args.video
    try:
        rows = _rows_of(args, cfg.storage)
    except (OSError, ValueError) as exc:
        if not is_storage_outage(exc):
            raise  # a usage error: no rows for this video, not a timelines table...
        print_json_line(status_record(video_id(uri), uri, FAILED, status_reason(exc), 0, 0))
        return 1
    ann = read_annotations(args.annotations, cfg.storage) if args.annotations else None
    vid = rows["video_id"][0].as_py()
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
    except Exception as exc:  # storage outage or a broken output: still a status record
        if not is_storage_outage(exc) and not isinstance(exc, OSError):
            raise
        print_json_line(status_record(vid, uri, FAILED, status_reason(exc), 0, 0))
        return 1
    if ann is not None and not out["truth"]:
        log.warning(
            "%s: no rows of %s name this video; no green dots", args.video, args.annotations
        )
    record = status_record(vid, uri, OK, None, out["tracks"], out["frames"])
    extra = {k: out[k] for k in ("output", "width", "height", "fps", "truth")}
    print_json_line({**record, **extra})
    return 0
