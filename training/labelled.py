"""Which face tracks carry a video's labels (the labelled person), and how many frames the
labels cover: the choices `vaerr preprocess` makes between the face stage and the shards.
Pure functions over track arrays (no I/O)."""

from __future__ import annotations

import numpy as np

from pipeline.faces.extract import FaceRun
from training.datasets.items import LabelTrack, resample_labels


def collect_tracks(run: FaceRun) -> dict[int, dict[str, np.ndarray]]:
    """A face run's rows grouped by track, each sorted by frame: track id -> frame_index,
    time_s, crop [N, S, S] uint8, box_xyxy [N, 4]."""
    cols = ("frame_index", "time_s", "crop", "box_xyxy")
    parts: dict[int, list[dict[str, np.ndarray]]] = {}
    for rows in run:
        for tid in np.unique(rows["track_id"]).tolist():
            sel = rows["track_id"] == tid
            parts.setdefault(int(tid), []).append({k: rows[k][sel] for k in cols})
    tracks = {}
    for tid, ps in parts.items():
        t = {k: np.concatenate([p[k] for p in ps]) for k in cols}
        order = np.argsort(t["frame_index"], kind="stable")
        tracks[tid] = {k: v[order] for k, v in t.items()}
    return tracks


def track_stats(tracks: dict[int, dict[str, np.ndarray]]) -> dict[int, dict[str, float]]:
    """Per track: frames, mean box area (px^2) and mean box centre x (px)."""
    out = {}
    for tid, t in tracks.items():
        box = t["box_xyxy"].astype(np.float64)
        area = (box[:, 2] - box[:, 0]).clip(0) * (box[:, 3] - box[:, 1]).clip(0)
        out[tid] = {
            "n": float(len(box)),
            "area": float(area.mean()),
            "cx": float(((box[:, 0] + box[:, 2]) / 2).mean()),
        }
    return out


def choose_tracks(
    stats: dict[int, dict[str, float]],
    faces: list[str | None],
    rule: str = "largest",
    major_fraction: float = 0.5,
) -> list[int | None]:
    """The track of each labelled face (None where none fits); for unlabelled data
    (`faces` empty) the rule's track(s).

    Rules: `largest` mean box area (ties: more frames), `longest` (ties: larger), `all`.
    A named face ("0", "1"... left-to-right index, "left", "right") is looked up among the
    major tracks (>= major_fraction of the longest) ordered by mean centre x; left/right
    need at least two major tracks to mean anything.
    """
    if not stats:
        return [None] * len(faces) if faces else []
    largest = max(stats, key=lambda t: (stats[t]["area"], stats[t]["n"], -t))
    longest = max(stats, key=lambda t: (stats[t]["n"], stats[t]["area"], -t))
    if not faces:
        if rule == "all":
            return sorted(stats)
        return [longest if rule == "longest" else largest]
    longest_n = max(s["n"] for s in stats.values())
    major = sorted(
        (t for t in stats if stats[t]["n"] >= major_fraction * longest_n),
        key=lambda t: stats[t]["cx"],
    )
    out: list[int | None] = []
    for face in faces:
        if face is None:
            out.append(longest if rule == "longest" else largest)
        elif face in ("left", "right"):
            out.append((major[0] if face == "left" else major[-1]) if len(major) >= 2 else None)
        else:
            i = int(face)
            out.append(major[i] if 0 <= i < len(major) else None)
    return out


def overlapping_tracks(
    tracks: dict[int, dict[str, np.ndarray]], chosen: int, iou_min: float, taken: set[int]
) -> list[int]:
    """Other tracks of the face `chosen` follows: mean box IoU >= iou_min with it and no frame
    shared with `chosen` or an earlier pick (largest first). `taken`: tracks already used."""

    def mean_box(t: int) -> np.ndarray:
        return np.asarray(tracks[t]["box_xyxy"], np.float64).mean(0)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    ref = mean_box(chosen)
    frames = set(tracks[chosen]["frame_index"].tolist())
    out = []
    others = sorted((t for t in tracks if t != chosen and t not in taken),
                    key=lambda t: -len(tracks[t]["frame_index"]))  # fmt: skip
    for t in others:
        f = set(tracks[t]["frame_index"].tolist())
        if iou(mean_box(t), ref) >= iou_min and not (f & frames):
            out.append(t)
            frames |= f
    return out


def annotated_frames(
    labels: list[LabelTrack],
    fps: float,
    n_frames: int | None,
    source_fps: float | None,
    max_gap_s: float | None,
) -> int | None:
    """Labelled frames the annotation holds at the analysis rate, summed over the annotated
    persons: frames 0..n_frames-1 (None: up to the last annotation) with both targets
    finite after resampling. Independent of face detection: the coverage denominator."""
    total = 0
    try:
        for lt in labels:
            t = lt.times(source_fps)
            if n_frames is None:
                ok = np.isfinite(t)
                n = int(np.floor(t[ok].max() * fps)) + 1 if ok.any() else 0
            else:
                n = int(n_frames)
            ft = np.arange(n, dtype=np.float64) / fps
            a = resample_labels(t, lt.arousal, ft, max_gap_s)
            v = resample_labels(t, lt.valence, ft, max_gap_s)
            total += int(np.sum(np.isfinite(a) & np.isfinite(v)))
    except ValueError:  # frame-indexed labels without the video's frame rate
        return None
    return total
