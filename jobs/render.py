"""`vaerr render VIDEO_URI TIMELINES --output out.mp4`: the video with its faces annotated."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from jobs.cli_io import add_config_args, config_from_args, print_json_line
from pipeline.errors import is_storage_outage
from pipeline.ids import video_id
from pipeline.outputs.caveats import SYNTHETIC_NOTE, synthetic_only
from pipeline.outputs.identity import VideoMatch, find_video
from pipeline.outputs.query import open_timelines
from pipeline.outputs.render import read_annotations, render_video
from pipeline.status import FAILED, OK, failure_reason, status_record
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
            "be read. The video's rows are those of its id (the hash of its URI) while its "
            "source is the version the job analysed; a copy kept elsewhere is named with "
            "--video-id, a match by file name alone is an error. Prints the status record "
            "(with output, width, height, fps) last; exit 1 when the video cannot be decoded."
        ),
    )
    p.add_argument("video", metavar="VIDEO_URI", help="The video (path or fsspec URI).")
    p.add_argument("timelines", metavar="TIMELINES", help="A job's OUT or OUT/timelines/.")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help=".mp4/.mkv/.mov path/URI.")
    p.add_argument("--annotations", metavar="CSV", help="Ground truth, generic CSV format.")
    p.add_argument(
        "--blur-faces",
        action="store_true",
        help="Blur every face box; frames past the analysed span are blurred whole, and a "
        "video whose status row (the analysed span) cannot be read is refused.",
    )
    p.add_argument(
        "--video-id",
        metavar="ID_OR_URI",
        help="VIDEO_URI is a copy of this video of TIMELINES (its video_id or the exact URI the "
        "job saw); default: the rows of VIDEO_URI's own id.",
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


def _match(args: argparse.Namespace, storage: object) -> VideoMatch:
    """The video's rows (pipeline.outputs.identity.find_video); with --blur-faces, its status row is
    required: it gives the span the job analysed, past which frames are blurred whole."""
    dataset = open_timelines(args.timelines, storage)
    match = find_video(args.video, args.timelines, dataset, storage, named=args.video_id)
    if args.blur_faces and (match.status is None or not match.status.get("duration_s")):
        raise ValueError(
            f"--blur-faces: no status row of {match.video_id} next to {args.timelines} gives the "
            "span the job analysed, so frames no row speaks for could not be blurred; give "
            "the job's OUT"
        )
    if not match.version_checked:
        log.warning(
            "%s: source version not compared with the job's (%s)",
            args.video,
            "a named copy" if args.video_id else "no version recorded",
        )
    return match


def _captions(match: VideoMatch) -> list[str]:
    """Lines on every frame besides the untrained warning: synthetic training data."""
    return [SYNTHETIC_NOTE] if match.status is not None and synthetic_only([match.status]) else []


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    cfg = config_from_args(args)
    check_output(args.output)
    uri = args.video
    try:
        match = _match(args, cfg.storage)
    except (OSError, ValueError) as exc:
        if not is_storage_outage(exc):
            raise  # a usage error: no rows for this video, not a timelines table...
        print_json_line(status_record(video_id(uri), uri, FAILED, failure_reason(exc, uri), 0, 0))
        return 1
    ann = read_annotations(args.annotations, cfg.storage) if args.annotations else None
    vid, rows = match.video_id, match.rows
    span = match.status.get("duration_s") if match.status else None
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
            captions=_captions(match),
            blur_after_s=span,
        )
    except VideoError as exc:
        print_json_line(status_record(vid, uri, FAILED, str(exc), 0, 0))
        return 1
    except Exception as exc:  # storage outage or a broken output: still a status record
        if not is_storage_outage(exc) and not isinstance(exc, OSError):
            raise
        print_json_line(status_record(vid, uri, FAILED, failure_reason(exc, uri), 0, 0))
        return 1
    if ann is not None and not out["truth"]:
        log.warning(
            "%s: no rows of %s name this video; no green dots", args.video, args.annotations
        )
    record = status_record(vid, uri, OK, None, out["tracks"], out["frames"])
    extra = {k: out[k] for k in ("output", "width", "height", "fps", "truth")}
    extra["notes"] = _captions(match)
    print_json_line({**record, **extra})
    return 0
