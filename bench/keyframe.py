"""Keyframe + ROI detection against every-frame detection: how far the 5 points and the 96x96
crops move, and what it saves (issue 15, item 6).

For each input video the face stage (`FacePipeline`, retina5, real RetinaFace weights) runs
once with full-frame detection on every frame (the reference) and once per ROI setting
(`faces.detector.roi.*`: a full-frame keyframe every n detected frames, in between RetinaFace
only on a window around each live track). Rows are matched by frame and box (IoU >= 0.5); per
setting and input the table gives the mean distance of the 5 points (px, source frame), the
mean absolute difference of the 96x96 gray crops (levels), the 95th percentiles, the rows the
reference has and the setting lacks (and extra ones), and the face stage's wall time.

fan68 (`--fan`): FAN's 68 points with ROI detection vs every-frame detection (FAN on every
frame in both), and "FAN on keyframes only": the keyframe's 68 points carried to the frames in
between by the similarity that maps the keyframe's 5 points onto that frame's, vs FAN run on
that frame. A randomly initialised FAN (no weights can be downloaded here) gives flat heatmaps
whose argmax moves with any rounding, so the second figure is an upper bound on what real
weights would give; it decides whether FAN may run on keyframes only (tolerance 1.0 px).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from bench.common import (
    VIDEOS,
    add_common_args,
    append_results,
    begin,
    bench_parser,
    face_overrides,
    log,
    machine_line,
    markdown_table,
    num,
    random_fan,
    synth_videos,
)

MODULE = "bench.keyframe"
POINTS_TOL = 1.0  # px, mean over points and rows
CROP_TOL = 2.0  # gray levels, mean absolute over pixels and rows
FACE_CLIPS = (
    "grid_bbaf2n.mpg",
    "grid_lbbc2a.mpg",
    "grid_swiz3n.mpg",
    "grid_two_speakers_sbs.mp4",
)


def run_rows(cfg: Any, uri: str, pipe: Any = None) -> tuple[dict[str, np.ndarray], float, Any]:
    """All face rows of one video (columns of pipeline.faces.stream.FACE_COLUMNS), the wall
    time of the face stage (models loaded before the clock) and the pipeline."""
    from pipeline.faces.extract import FacePipeline

    pipe = pipe or FacePipeline(cfg)
    t0 = time.perf_counter()
    parts = list(pipe.run(uri))
    wall = time.perf_counter() - t0
    if not parts:
        return {}, wall, pipe
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, wall, pipe


def match_rows(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Pairs of row indices (ref, got) on the same frame whose boxes overlap (IoU >= 0.5),
    best first, each row used once; -> (ref_idx, got_idx, missing, extra)."""
    from pipeline.faces.align import box_iou

    if not ref or not got:
        n_ref = len(ref.get("frame_index", [])) if ref else 0
        n_got = len(got.get("frame_index", [])) if got else 0
        return np.zeros(0, int), np.zeros(0, int), n_ref, n_got
    ri, gi = [], []
    for f in np.unique(ref["frame_index"]):
        a = np.flatnonzero(ref["frame_index"] == f)
        b = np.flatnonzero(got["frame_index"] == f)
        if len(b) == 0:
            continue
        iou = box_iou(ref["box_xyxy"][a].astype(np.float64), got["box_xyxy"][b].astype(np.float64))
        used: set[int] = set()
        for i in np.argsort(-iou.max(1)):
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.5 and j not in used:
                used.add(j)
                ri.append(a[i])
                gi.append(b[j])
    ri_a, gi_a = np.asarray(ri, int), np.asarray(gi, int)
    return ri_a, gi_a, len(ref["frame_index"]) - len(ri_a), len(got["frame_index"]) - len(gi_a)


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Point and crop differences of matched rows (see module doc)."""
    ri, gi, missing, extra = match_rows(ref, got)
    if len(ri) == 0:
        return {"rows": 0, "missing": missing, "extra": extra}
    pts = np.linalg.norm(
        ref["landmarks"][ri].astype(np.float64) - got["landmarks"][gi].astype(np.float64), axis=-1
    )
    crop = np.abs(ref["crop"][ri].astype(np.float64) - got["crop"][gi].astype(np.float64))
    per_crop = crop.reshape(len(ri), -1).mean(1)
    return {
        "rows": len(ri),
        "missing": missing,
        "extra": extra,
        "pts_mean": float(pts.mean()),
        "pts_p95": float(np.quantile(pts.mean(1), 0.95)),
        "crop_mean": float(per_crop.mean()),
        "crop_p95": float(np.quantile(per_crop, 0.95)),
    }


def carry_fan(ref68: dict[str, np.ndarray], ref5: dict[str, np.ndarray], period: int) -> float:
    """Mean 68-point error (px) of FAN on keyframes only: for frame f between keyframes, the
    68 points of the latest keyframe k of the same face mapped by the similarity that takes the
    5 detector points of k onto those of f, against FAN's own points at f. Faces are matched
    to the retina5 reference rows by frame and box."""
    import torch

    from pipeline.faces.warp import similarity_batch

    ri, gi, _, _ = match_rows(ref5, ref68)
    if len(ri) == 0:
        return float("nan")
    p5 = {(int(ref5["frame_index"][r]), int(ref5["track_id"][r])): r for r in ri}
    fan_of = dict(zip(ri.tolist(), gi.tolist()))
    errs = []
    for (f, t), r in p5.items():
        k = f - f % period
        if k == f or (k, t) not in p5:
            continue
        rk = p5[(k, t)]
        src = torch.from_numpy(ref5["landmarks"][rk][None].astype(np.float64))
        m = similarity_batch(src, torch.from_numpy(ref5["landmarks"][r])).numpy()[0]
        pts = ref68["landmarks"][fan_of[rk]].astype(np.float64)
        moved = pts @ m[:, :2].T + m[:, 2]
        errs.append(np.linalg.norm(moved - ref68["landmarks"][fan_of[r]], axis=-1).mean())
    return float(np.mean(errs)) if errs else float("nan")


def roi_sets(spec: str) -> list[tuple[str, list[str]]]:
    """'8x1.6x128,4x2.0x128' -> [(label, overrides)] of (keyframe_every, enlarge, min_side)."""
    out = []
    for item in spec.split(","):
        n, e, s = item.split("x")
        out.append(
            (
                f"key {n}, x{e}, {s} px",
                [
                    f"faces.detector.roi.keyframe_every={n}",
                    f"faces.detector.roi.enlarge={e}",
                    f"faces.detector.roi.min_side={s}",
                ],
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = bench_parser(MODULE, __doc__, "2 s of each input, synthetic 4 s, one ROI setting")
    p.add_argument("--rois", default="4x1.6x128,8x1.6x128,8x2.0x128,16x1.6x128")
    p.add_argument("--seconds", type=float, default=8.0, help="synthetic video length, s")
    p.add_argument("--fan", action="store_true", help="also the fan68 rows (random FAN)")
    p.add_argument("--fan-seconds", type=float, default=1.0, help="fan68: first N s per input")
    add_common_args(p, worker=False)
    a = p.parse_args(argv)
    command = begin(MODULE, argv, a.workdir)
    from schemas.config import load_config

    if a.quick:
        a.rois, a.seconds = a.rois.split(",")[1], 4.0
    inputs = [(n, str(VIDEOS / n)) for n in FACE_CLIPS]
    (s360,) = synth_videos(a.workdir, "synth", 1, a.seconds, (360, 640), 1, 100)
    (s720,) = synth_videos(a.workdir, "synth", 1, a.seconds, (720, 1280), 2, 200)
    inputs += [(f"synth 640x360 {a.seconds:g} s, 1 face", s360)]
    inputs += [(f"synth 1280x720 {a.seconds:g} s, 2 faces", s720)]
    end = ["video.end_s=2"] if a.quick else []
    base = face_overrides("retina5") + a.sets + end
    ref_sets = ["faces.detector.roi.keyframe_every=1"]
    rows, verdict = [], []
    t_start = time.perf_counter()
    ref_pipe = None
    refs: dict[str, tuple[dict[str, np.ndarray], float]] = {}
    for name, uri in inputs:
        ref, wall, ref_pipe = run_rows(load_config(None, base + ref_sets), uri, ref_pipe)
        refs[name] = (ref, wall)
        n = len(ref.get("frame_index", []))
        rows.append([name, "every frame (reference)", n, "-", "-", "-", "-", "-", num(wall, 2)])
        log(f"{name}: reference {n} rows in {wall:.1f} s")
    for label, sets in roi_sets(a.rois):
        pipe = None
        worst = {"pts_mean": 0.0, "crop_mean": 0.0, "missing": 0}
        speed = []
        for name, uri in inputs:
            got, wall, pipe = run_rows(load_config(None, base + sets), uri, pipe)
            c = compare(refs[name][0], got)
            speed.append(refs[name][1] / max(wall, 1e-9))
            for k in worst:
                worst[k] = max(worst[k], c.get(k, 0.0))
            rows.append(
                [
                    name,
                    label,
                    c["rows"],
                    f"{c['missing']}/{c['extra']}",
                    num(c.get("pts_mean"), 3),
                    num(c.get("pts_p95"), 3),
                    num(c.get("crop_mean"), 3),
                    num(c.get("crop_p95"), 3),
                    f"{wall:.2f} ({refs[name][1] / max(wall, 1e-9):.2f}x)",
                ]
            )
            log(f"{name}: {label}: {c}")
        ok = (
            worst["pts_mean"] <= POINTS_TOL
            and worst["crop_mean"] <= CROP_TOL
            and worst["missing"] == 0
        )
        verdict.append(
            f"* {label}: worst input mean point distance {worst['pts_mean']:.3f} px, crop "
            f"{worst['crop_mean']:.3f} levels, missing rows {worst['missing']}; face stage "
            f"{np.median(speed):.2f}x faster (median over inputs): "
            + ("**within tolerance**" if ok else "**outside tolerance**")
        )
    heads = [
        "input",
        "detection",
        "rows",
        "missing/extra",
        "pts px mean",
        "pts px p95",
        "crop lvl mean",
        "crop lvl p95",
        "face stage s",
    ]
    body = [
        f"Tolerance (issue 15, item 6): mean point distance <= {POINTS_TOL} px and mean "
        f"absolute crop difference <= {CROP_TOL} gray levels of every-frame detection, on every "
        "input, no tracked row lost. retina5, real RetinaFace weights, device cpu"
        + (", first 2 s of each input" if a.quick else "")
        + ".",
        "",
        markdown_table(heads, rows),
        "",
        *verdict,
    ]
    if a.fan:
        fan = random_fan(a.workdir / "fan_random.pth")
        fan_end = [f"video.end_s={a.fan_seconds:g}"]
        fan_base = face_overrides("fan68", fan) + a.sets + fan_end + ref_sets
        label, sets = roi_sets(a.rois)[0]
        period = int(sets[0].split("=")[1])
        frows = []
        pipe5 = pipe68 = pipe68r = None
        for name, uri in inputs:
            r5, _, pipe5 = run_rows(load_config(None, base + fan_end + ref_sets), uri, pipe5)
            r68, w68, pipe68 = run_rows(load_config(None, fan_base), uri, pipe68)
            g68, g_w, pipe68r = run_rows(load_config(None, fan_base + sets), uri, pipe68r)
            c = compare(r68, g68)
            carried = carry_fan(r68, r5, period)
            frows.append(
                [
                    name,
                    c["rows"],
                    f"{c['missing']}/{c['extra']}",
                    num(c.get("pts_mean"), 3),
                    num(c.get("crop_mean"), 3),
                    num(carried, 2),
                    f"{w68:.1f} / {g_w:.1f}",
                ]
            )
            log(f"{name}: fan68: {c}, carried {carried:.2f}")
        body += [
            "",
            f"fan68 (random FAN, first {a.fan_seconds:g} s of each input): ROI detection "
            f"({label}) vs every-frame detection, FAN on every frame in both; and FAN on "
            f"keyframes only (every {period}th frame, points carried by the 5-point similarity) "
            "vs FAN on every frame:",
            "",
            markdown_table(
                [
                    "input",
                    "rows",
                    "missing/extra",
                    "68 pts px mean (ROI)",
                    "crop lvl mean (ROI)",
                    "68 pts px mean (FAN keyframes only)",
                    "face stage s (ref / ROI)",
                ],
                frows,
            ),
        ]
    body.append("")
    body.append(f"* Whole run: {(time.perf_counter() - t_start) / 60:.1f} min; {machine_line()}.")
    text = "\n".join(body)
    print(text)
    if not a.no_append:
        append_results("keyframe", command, text, a.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
