"""Annotated video: face boxes, track ids and a valence/arousal circumplex inset per face.

Decoding is `pipeline.video.VideoReader` (streaming, any fsspec URI, rotation applied) and
encoding `pipeline.encode.write_video` (PyAV, H.264 yuv420p by default, what players play), so a
video of any length passes through in chunks. For every output frame at t seconds each track
visible at t (within half an output step of its rows; not across a gap in its rows) gets:

* its box (linearly interpolated between timeline rows, which come at 10 Hz) and `face N`;
* an inset beside the box: a circle of the valence (x, right = positive) / arousal (y, up =
  high) plane, the emotion words of METHOD.md at their angles around it, the prediction as a
  red dot at (valence, arousal) x radius from the centre, the ground truth as a green dot when
  annotations are given, and a line of text with the values and the word.

Ground truth is the generic CSV format `video,time_s,arousal,valence[,face]`: `video` names the
video by video_id, URI or file name (a suffix of the URI); `face` is the track id, and without
it the rows apply to every face. `blur_faces` blurs each box before drawing (faces are personal
data) and fails closed: a frame past the span the job analysed (`blur_after_s`: a copy or a
longer file has frames no row speaks for) is blurred whole. Which rows belong to a video is
pipeline/outputs/identity.py's answer (its id and source version, never its file name). Small videos
are scaled up so that the shorter side is at least `MIN_SHORT_SIDE` pixels: the words are
unreadable at 288 lines.

Geometry (`layout_for`, `inset_center`, `va_point`) is pure and public so tests can find the dots.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator
from typing import Any, NamedTuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.emotion import emotion_words
from pipeline.encode import write_video
from pipeline.ids import video_id as video_id_of
from pipeline.outputs.caveats import UNTRAINED_NOTE
from pipeline.progress import Progress
from pipeline.storage import local_output, open_uri
from pipeline.video import VideoReader
from schemas.config import EmotionConfig, StorageConfig

MIN_SHORT_SIDE = 540
RED, GREEN = (230, 20, 20), (30, 210, 60)
BOX_COLOR, TEXT_COLOR, AXIS_COLOR = (255, 210, 0), (255, 255, 255), (150, 150, 150)
FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------------------------
# Inputs


class TrackSeries(NamedTuple):
    """One track's timeline rows: time_s [N] s, arousal/valence [N], box [N, 4] source px."""

    track_id: int
    time_s: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray
    box: np.ndarray
    step: float


def track_series(timelines: pa.Table) -> list[TrackSeries]:
    """TIMELINES rows of one video -> one TrackSeries per track, rows sorted by time."""
    table = timelines.sort_by([("track_id", "ascending"), ("time_s", "ascending")])
    tid = table["track_id"].to_numpy(zero_copy_only=False)
    t = table["time_s"].to_numpy(zero_copy_only=False).astype(np.float64)
    a = table["arousal"].to_numpy(zero_copy_only=False).astype(np.float64)
    v = table["valence"].to_numpy(zero_copy_only=False).astype(np.float64)
    boxes = np.asarray(table["box_xyxy"].to_pylist(), np.float64).reshape(-1, 4)
    out = []
    for k in np.unique(tid):
        s = tid == k
        d = np.diff(t[s])
        step = float(np.median(d[d > 0])) if (d > 0).any() else 0.1
        out.append(TrackSeries(int(k), t[s], a[s], v[s], boxes[s], step))
    return out


def sample_track(s: TrackSeries, t: float) -> tuple[float, float, np.ndarray] | None:
    """(arousal, valence, box [4]) of a track at t seconds, interpolated between rows; None when
    the track is not on screen (more than half a step outside its rows, or inside a gap)."""
    tt = s.time_s
    half = s.step / 2 + 1e-6
    if t < tt[0] - half or t > tt[-1] + half:
        return None
    i = int(np.searchsorted(tt, t))
    near = min(abs(t - tt[max(i - 1, 0)]), abs(tt[min(i, len(tt) - 1)] - t))
    if near > s.step * 0.75 + 1e-6:  # a gap in the track: no face there
        return None
    a = float(np.interp(t, tt, s.arousal))
    v = float(np.interp(t, tt, s.valence))
    box = np.array([np.interp(t, tt, s.box[:, j]) for j in range(4)])
    return a, v, box


class GroundTruth(NamedTuple):
    """Annotated values of one face (track id) or of every face (face None)."""

    face: int | None
    time_s: np.ndarray
    arousal: np.ndarray
    valence: np.ndarray


def read_annotations(uri: str, storage: StorageConfig | None = None) -> pa.Table:
    """The generic label CSV `video,time_s,arousal,valence[,face]` as an Arrow table."""
    with open_uri(uri, "rb", storage) as f:
        table = pacsv.read_csv(f)
    missing = {"video", "time_s", "arousal", "valence"} - set(table.column_names)
    if missing:
        raise ValueError(f"{uri}: annotation CSV lacks columns {sorted(missing)}")
    return table


def annotations_for(table: pa.Table, video_id: str, uri: str) -> list[GroundTruth]:
    """The rows of `table` (read_annotations) naming this video, per face. `video` matches the
    video_id, the URI, or a path suffix of the URI (`clip.mp4`, `videos/clip.mp4`)."""
    names = [str(x) for x in table["video"].to_pylist()]
    keep = np.array(
        [n in (video_id, uri) or uri.endswith("/" + n.lstrip("./")) for n in names], bool
    )
    if not keep.any():
        return []
    rows = table.filter(pa.array(keep))
    t = np.asarray(rows["time_s"].to_pylist(), np.float64)
    a = np.asarray(rows["arousal"].to_pylist(), np.float64)
    v = np.asarray(rows["valence"].to_pylist(), np.float64)
    faces = rows["face"].to_pylist() if "face" in rows.column_names else [None] * len(t)
    out = []
    for face in sorted(set(faces), key=lambda x: -1 if x is None else int(x)):
        s = np.array([f == face for f in faces]) & np.isfinite(a) & np.isfinite(v)
        order = np.argsort(t[s], kind="stable")
        key = None if face is None else int(face)
        out.append(GroundTruth(key, t[s][order], a[s][order], v[s][order]))
    return out


def truth_at(gts: list[GroundTruth], track_id: int, t: float) -> tuple[float, float] | None:
    """(arousal, valence) annotated for a track at t (its face's rows, else the rows without a
    face), linearly interpolated; None outside the annotated span (plus one label step)."""
    chosen = [g for g in gts if g.face == track_id] or [g for g in gts if g.face is None]
    for g in chosen:
        if len(g.time_s) == 0:
            continue
        d = np.diff(g.time_s)
        tol = float(np.median(d)) if len(d) else 0.0
        if g.time_s[0] - tol <= t <= g.time_s[-1] + tol:
            return float(np.interp(t, g.time_s, g.arousal)), float(
                np.interp(t, g.time_s, g.valence)
            )
    return None


# --------------------------------------------------------------------------------------------
# Geometry (pure)


class Layout(NamedTuple):
    """Sizes in output pixels, all proportional to `unit` = short side / MIN_SHORT_SIDE."""

    unit: float
    radius: int  # circumplex radius
    dot: int  # red/green dot radius
    font: float  # cv2 font scale of the words
    label_font: float  # cv2 font scale of `face N` and the values lines
    thick: int  # line thickness
    gap: int  # small spacing
    word_h: int  # height of a word
    half_w: int  # inset half width (circle + words)
    half_h: int  # inset extent above the centre
    below: int  # inset extent below the centre (circle, words, two values lines)
    margin: int  # gap between a box and its inset


def layout_for(width: int, height: int, emotion: EmotionConfig | None = None) -> Layout:
    """Inset sizes for an output frame of width x height px (the words' widths measured)."""
    emotion = emotion or EmotionConfig()
    u = min(width, height) / MIN_SHORT_SIDE
    radius = max(16, int(round(46 * u)))
    font, label_font = 0.36 * u, 0.5 * u
    widest = max([cv2.getTextSize(w, FONT, font, 1)[0][0] for w in emotion.angles] or [0])
    word_h = cv2.getTextSize("Ag", FONT, font, 1)[0][1]
    line_h = cv2.getTextSize("Ag", FONT, label_font, 1)[0][1]
    values_w = cv2.getTextSize("truth A +0.00  V +0.00", FONT, label_font, 1)[0][0]
    gap = max(2, int(round(4 * u)))
    half_w = max(radius + gap + widest + gap, values_w // 2 + gap)
    half_h = radius + 2 * (gap + word_h) + gap  # words near the top are staggered in 2 rows
    return Layout(
        unit=u,
        radius=radius,
        dot=max(3, int(round(5 * u))),
        font=font,
        label_font=label_font,
        thick=max(1, int(round(2 * u))),
        gap=gap,
        word_h=word_h,
        half_w=half_w,
        half_h=half_h,
        below=half_h + 2 * (line_h + 2 * gap),
        margin=max(4, int(round(8 * u))),
    )


SIDES = ("right", "left", "below", "above")
ALIGNS = ("centre", "start", "end", "frame_start", "frame_end")
"""Where along its side an inset sits: level with the box centre, level with its top/left or
bottom/right edge, or at the frame's top/left or bottom/right edge."""
Rect = tuple[float, float, float, float]


def inset_rect(center: tuple[int, int], lay: Layout) -> Rect:
    """(x1, y1, x2, y2) px covered by the inset centred at `center`."""
    cx, cy = center
    return cx - lay.half_w, cy - lay.half_h, cx + lay.half_w, cy + lay.below


def side_center(
    box: np.ndarray, side: str, align: str, lay: Layout, width: int, height: int
) -> tuple[int, int]:
    """Inset centre on one side of a box (`SIDES`), placed along that side by `align`
    (`ALIGNS`), kept inside the frame along the side where it can be."""
    x1, y1, x2, y2 = (float(c) for c in box)
    if side in ("right", "left"):
        cx = x2 + lay.margin + lay.half_w if side == "right" else x1 - lay.margin - lay.half_w
        lo, hi = lay.half_h, height - lay.below  # range of the centre's y inside the frame
        along = {"centre": (y1 + y2) / 2, "start": y1 + lay.half_h, "end": y2 - lay.below}
        cy = min(max(along.get(align, lo if align == "frame_start" else hi), lo), hi)
    else:
        cy = y2 + lay.margin + lay.half_h if side == "below" else y1 - lay.margin - lay.below
        lo, hi = lay.half_w, width - lay.half_w
        along = {"centre": (x1 + x2) / 2, "start": x1 + lay.half_w, "end": x2 - lay.half_w}
        cx = min(max(along.get(align, lo if align == "frame_start" else hi), lo), hi)
    return int(round(cx)), int(round(cy))


def _overlap(r: Rect, others: list[Rect]) -> float:
    return sum(
        max(0.0, min(r[2], o[2]) - max(r[0], o[0])) * max(0.0, min(r[3], o[3]) - max(r[1], o[1]))
        for o in others
    )


Place = tuple[str, str]  # (side, align)


def place_insets(
    boxes: list[np.ndarray],
    lay: Layout,
    width: int,
    height: int,
    prefer: list[Place | None] | None = None,
) -> list[tuple[tuple[int, int], Place]]:
    """(centre, (side, align)) of each face's inset, greedily in the given order: the first
    place (the face's previous place first, so insets do not jump between frames; then each
    side in `SIDES` order with each alignment in `ALIGNS` order) that lies inside the frame and
    covers no face box and no inset placed before; when none does, the place inside the frame
    with the least overlap; when none is inside the frame, the right side pushed inside."""
    prefer = prefer or [None] * len(boxes)
    box_rects = [tuple(float(c) for c in b) for b in boxes]
    every = [(s, a) for s in SIDES for a in ALIGNS]
    placed: list[Rect] = []
    out = []
    for box, pref in zip(boxes, prefer):
        order = ([pref] if pref in every else []) + [p for p in every if p != pref]
        best: tuple[float, tuple[int, int], Place] | None = None
        for place in order:
            c = side_center(box, place[0], place[1], lay, width, height)
            r = inset_rect(c, lay)
            if r[0] < 0 or r[1] < 0 or r[2] > width or r[3] > height:
                continue
            cost = _overlap(r, placed + box_rects)
            if best is None or cost < best[0]:
                best = (cost, c, place)
            if cost == 0:
                break
        if best is None:
            cx, cy = side_center(box, "right", "centre", lay, width, height)
            cx = int(min(max(cx, lay.half_w), max(lay.half_w, width - lay.half_w)))
            best = (0.0, (cx, cy), ("right", "centre"))
        placed.append(inset_rect(best[1], lay))
        out.append((best[1], best[2]))
    return out


def inset_center(box: np.ndarray, lay: Layout, width: int, height: int) -> tuple[int, int]:
    """Centre (x, y) px of the inset of a face alone in the frame (see `place_insets`)."""
    return place_insets([box], lay, width, height)[0][0]


def va_point(
    center: tuple[int, int], radius: int, arousal: float, valence: float
) -> tuple[int, int]:
    """Pixel of (valence, arousal) in a circumplex at `center`: valence to the right, arousal up,
    1.0 = the radius; values clipped to [-1, 1]."""
    v = min(max(float(valence), -1.0), 1.0)
    a = min(max(float(arousal), -1.0), 1.0)
    return int(round(center[0] + v * radius)), int(round(center[1] - a * radius))


def output_size(width: int, height: int, scale: float | None = None) -> tuple[int, int]:
    """Even (width, height) of the rendered video: scaled by `scale`, or (None) up so the short
    side reaches MIN_SHORT_SIDE, never down. Even sizes: yuv420p needs them."""
    if scale is None:
        scale = max(1.0, MIN_SHORT_SIDE / max(1, min(width, height)))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


# --------------------------------------------------------------------------------------------
# Drawing (in place on uint8 RGB [H, W, 3])


def _clip_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(c)) for c in box)
    return max(0, x1), max(0, y1), min(width, x2), min(height, y2)


def blur_region(img: np.ndarray, box: np.ndarray) -> None:
    """Blur a face box (grown by 10 %) beyond recognition: mosaic of about 8 cells across, then
    a Gaussian over it, so no edge of an eye or mouth survives."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(c) for c in box)
    gx, gy = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    x1, y1, x2, y2 = _clip_box(np.array([x1 - gx, y1 - gy, x2 + gx, y2 + gy]), w, h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    roi = img[y1:y2, x1:x2]
    cells = max(2, min(8, x2 - x1, y2 - y1))
    small = cv2.resize(roi, (cells, max(2, cells * (y2 - y1) // max(1, x2 - x1))), cv2.INTER_AREA)
    mosaic = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
    k = (max(x2 - x1, y2 - y1) // 4) | 1
    img[y1:y2, x1:x2] = cv2.GaussianBlur(mosaic, (k, k), 0)


def _darken(img: np.ndarray, x1: int, y1: int, x2: int, y2: int, alpha: float = 0.55) -> None:
    h, w = img.shape[:2]
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if x2 > x1 and y2 > y1:
        img[y1:y2, x1:x2] = (img[y1:y2, x1:x2] * (1 - alpha)).astype(np.uint8)


def draw_circumplex(
    img: np.ndarray, center: tuple[int, int], lay: Layout, emotion: EmotionConfig
) -> None:
    """Darkened inset, circle, axes and the words at their angles (outside the circle, each
    anchored on the side facing it; near the top and bottom, where words are wider than their
    angular spacing, every second word sits one row further out)."""
    cx, cy = center
    x1, y1, x2, y2 = (int(c) for c in inset_rect(center, lay))
    _darken(img, x1, y1, x2, y2)
    r = lay.radius
    cv2.line(img, (cx - r, cy), (cx + r, cy), AXIS_COLOR, 1, cv2.LINE_AA)
    cv2.line(img, (cx, cy - r), (cx, cy + r), AXIS_COLOR, 1, cv2.LINE_AA)
    cv2.circle(img, center, r, TEXT_COLOR, 1, cv2.LINE_AA)
    steep = 0
    for word, deg in sorted(emotion.angles.items(), key=lambda kv: kv[1] % 360):
        th = math.radians(deg)
        out = r + lay.gap
        if abs(math.sin(th)) > 0.6:
            out += (lay.word_h + lay.gap) * (steep % 2)
            steep += 1
        px, py = cx + out * math.cos(th), cy - out * math.sin(th)
        (tw, th_px), _ = cv2.getTextSize(word, FONT, lay.font, 1)
        x = px - tw * (1 - math.cos(th)) / 2
        y = py + th_px * (1 + math.sin(th)) / 2
        cv2.putText(img, word, (int(x), int(y)), FONT, lay.font, TEXT_COLOR, 1, cv2.LINE_AA)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: Any) -> None:
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def draw_box(img: np.ndarray, box: np.ndarray, track_id: int, lay: Layout) -> None:
    """The face box and its `face N` label (above the box, or below when at the top edge)."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = _clip_box(box, w, h)
    cv2.rectangle(img, (x1, y1), (x2, y2), BOX_COLOR, lay.thick, cv2.LINE_AA)
    label = f"face {track_id}"
    (lw, lh), _ = cv2.getTextSize(label, FONT, lay.label_font, 1)
    ly = y1 - 4 if y1 - lh - 6 >= 0 else min(h - 2, y2 + lh + 4)
    _darken(img, x1, ly - lh - 3, x1 + lw + 4, ly + 3, 0.6)
    _text(img, label, (x1 + 2, ly), lay.label_font, BOX_COLOR)


def draw_inset(
    img: np.ndarray,
    center: tuple[int, int],
    values: tuple[float, float],
    truth: tuple[float, float] | None,
    lay: Layout,
    emotion: EmotionConfig,
) -> None:
    """The circumplex at `center` with the green (truth) and red (prediction, drawn last, on
    top) dots and the values lines. values/truth are (arousal, valence)."""
    draw_circumplex(img, center, lay, emotion)
    a, v = values
    word = str(emotion_words(np.array([a]), np.array([v]), emotion)[0])
    line_h = cv2.getTextSize("Ag", FONT, lay.label_font, 1)[0][1]
    x = center[0] - lay.half_w + lay.gap
    y = center[1] + lay.half_h + line_h + lay.gap
    _text(img, f"A {a:+.2f}  V {v:+.2f}  {word}", (x, y), lay.label_font, TEXT_COLOR)
    if truth is not None:
        ta, tv = truth
        gt = f"truth A {ta:+.2f}  V {tv:+.2f}"
        _text(img, gt, (x, y + line_h + 2 * lay.gap), lay.label_font, GREEN)
        cv2.circle(img, va_point(center, lay.radius, ta, tv), lay.dot, GREEN, -1, cv2.LINE_AA)
    cv2.circle(img, va_point(center, lay.radius, a, v), lay.dot, RED, -1, cv2.LINE_AA)


def annotate_frame(
    img: np.ndarray,
    t: float,
    tracks: list[TrackSeries],
    truth: list[GroundTruth],
    lay: Layout,
    scale_xy: tuple[float, float],
    blur_faces: bool,
    emotion: EmotionConfig,
    sides: dict[int, Place] | None = None,
) -> np.ndarray:
    """Draw every track visible at t seconds on an output-size RGB frame (in place); boxes are
    scaled from source pixels by scale_xy. Blurring happens before any drawing, boxes before
    insets (an inset may cover another face's box, never its own dots). `sides` keeps each
    track's inset place from frame to frame (updated in place)."""
    sides = {} if sides is None else sides
    sx, sy = scale_xy
    visible = []
    for s in tracks:
        got = sample_track(s, t)
        if got is not None:
            a, v, box = got
            visible.append((s.track_id, a, v, box * np.array([sx, sy, sx, sy])))
    if blur_faces:
        for _, _, _, box in visible:
            blur_region(img, box)
    h, w = img.shape[:2]
    boxes = [box for _, _, _, box in visible]
    places = place_insets(boxes, lay, w, h, [sides.get(tid) for tid, *_ in visible])
    for tid, _, _, box in visible:
        draw_box(img, box, tid, lay)
    for (tid, a, v, _), (center, side) in zip(visible, places):
        sides[tid] = side
        draw_inset(img, center, (a, v), truth_at(truth, tid, t), lay, emotion)
    return img


# --------------------------------------------------------------------------------------------
# The whole video


def rendered_frames(
    reader: VideoReader,
    tracks: list[TrackSeries],
    truth: list[GroundTruth],
    fps: float,
    scale: float | None,
    blur_faces: bool,
    emotion: EmotionConfig,
    counter: dict[str, int],
    banner: list[str] | None = None,
    blur_after_s: float | None = None,
) -> Iterator[np.ndarray]:
    """Annotated output frames, streamed chunk by chunk from the reader; counts into
    counter['frames'] and records the output size in counter['width'/'height']. `banner`:
    lines written in the top-left corner of every frame (what the model is: untrained,
    trained on synthetic faces only). With `blur_faces`, frames after `blur_after_s` s are
    blurred whole (no row says where their faces are)."""
    lay: Layout | None = None
    sides: dict[int, Place] = {}
    for chunk in reader.chunks(fps):
        for img, t in zip(chunk.frames, chunk.time_s):
            src_h, src_w = img.shape[:2]
            out_w, out_h = output_size(src_w, src_h, scale)
            if lay is None:
                lay = layout_for(out_w, out_h, emotion)
                counter.update(width=out_w, height=out_h)
            if (out_w, out_h) != (src_w, src_h):
                img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            else:
                img = img.copy()
            if blur_faces and blur_after_s is not None and t > blur_after_s:
                blur_region(img, np.array([0.0, 0.0, out_w, out_h]))
            annotate_frame(
                img,
                float(t),
                tracks,
                truth,
                lay,
                (out_w / src_w, out_h / src_h),
                blur_faces,
                emotion,
                sides,
            )
            line_h = cv2.getTextSize("Ag", FONT, lay.label_font, 1)[0][1] + 2 * lay.gap
            for i, line in enumerate(banner or []):
                _text(img, line, (lay.gap, (i + 1) * line_h), lay.label_font, (255, 80, 80))
            counter["frames"] += 1
            yield img


_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


def render_video(
    video_uri: str,
    timelines: pa.Table,
    output: str,
    *,
    annotations: pa.Table | None = None,
    blur_faces: bool = False,
    scale: float | None = None,
    fps: float | None = None,
    storage: StorageConfig | None = None,
    emotion: EmotionConfig | None = None,
    crf: int = 20,
    captions: list[str] | None = None,
    blur_after_s: float | None = None,
) -> dict[str, Any]:
    """Render `video_uri` with the overlays of its TIMELINES rows (one video) to `output` (.mp4,
    .mkv, .mov; any fsspec URI). fps: output rate (None: the source's average rate, so every
    source frame appears once). annotations: read_annotations() table or None. captions: lines
    written on every frame besides the untrained warning; blur_after_s: see rendered_frames.
    Returns
    {"video_id", "uri", "output", "frames", "width", "height", "fps", "tracks", "truth"}."""
    emotion = emotion or EmotionConfig()
    tracks = track_series(timelines)
    vid = timelines["video_id"][0].as_py() if timelines.num_rows else video_id_of(video_uri)
    uri = timelines["uri"][0].as_py() if timelines.num_rows else video_uri
    truth = annotations_for(annotations, vid, uri) if annotations is not None else []
    if annotations is not None and not truth:
        truth = annotations_for(annotations, vid, video_uri)
    counter = {"frames": 0, "width": 0, "height": 0}
    with VideoReader(video_uri, storage) as reader:
        rate = fps or reader.info.src_fps or 25.0
        untrained = "untrained" in timelines.column_names and any(
            timelines["untrained"].to_pylist()
        )
        banner = ([UNTRAINED_NOTE] if untrained else []) + list(captions or [])
        frames = rendered_frames(
            reader, tracks, truth, rate, scale, blur_faces, emotion, counter, banner, blur_after_s
        )
        bar = Progress("render", 1, int(reader.info.duration_s * rate) or None, unit="frame")
        # A failed render leaves nothing under `output` (storage.local_output).
        with local_output(output, storage) as target, bar:
            write_video(
                target,
                bar.count(frames),
                rate,
                crf=crf,
                container_format=_FORMATS.get(posixpath.splitext(output)[1].lower()),
            )
    return {
        "video_id": vid,
        "uri": uri,
        "output": output,
        "frames": counter["frames"],
        "width": counter["width"],
        "height": counter["height"],
        "fps": rate,
        "tracks": len(tracks),
        "truth": bool(truth),
    }
