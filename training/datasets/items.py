"""What every dataset reader returns, and the helpers they share: listing files on any fsspec
URI, splits, subjects, and resampling annotations to the analysis frame times.

A reader turns a dataset's own files into `VideoItem`s: one per video, with zero (unlabelled,
e.g. LRS3) or more `LabelTrack`s (one per annotated person). Label values are arousal and
valence in [-1, 1], NaN where the annotation is missing. Times are seconds from the video's
first frame, or source frame numbers (Aff-Wild2, AFEW-VA), turned into seconds with the
video's own frame rate once it is opened (`LabelTrack.times`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from pipeline.ids import video_id
from pipeline.storage import find, read_text, without_scheme
from schemas.config import StorageConfig

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm", ".m4v", ".ts", ".wmv")


@dataclass
class LabelTrack:
    """One annotated person of one video.

    face: None (the dataset's one person: chosen by `data.face_rule`), a left-to-right index
    as a string ("0" = leftmost), or "left" / "right". Exactly one of `time_s` (seconds,
    float64 [N]) and `frame` (source frame numbers, int [N]) is set. arousal, valence:
    float32 [N] in [-1, 1], NaN = missing.
    """

    arousal: np.ndarray
    valence: np.ndarray
    time_s: np.ndarray | None = None
    frame: np.ndarray | None = None
    face: str | None = None

    def __post_init__(self) -> None:
        if (self.time_s is None) == (self.frame is None):
            raise ValueError("a LabelTrack needs exactly one of time_s and frame")
        self.arousal = np.asarray(self.arousal, np.float32)
        self.valence = np.asarray(self.valence, np.float32)
        n = len(self.time_s if self.time_s is not None else self.frame)
        if len(self.arousal) != n or len(self.valence) != n:
            raise ValueError(
                f"label lengths differ: {n} times, {len(self.arousal)} arousal, "
                f"{len(self.valence)} valence"
            )

    def times(self, source_fps: float | None) -> np.ndarray:
        """Annotation times in seconds [N]; frame-indexed labels need the source frame rate."""
        if self.time_s is not None:
            return np.asarray(self.time_s, np.float64)
        if not source_fps or source_fps <= 0:
            raise ValueError("frame-indexed labels need the video's frame rate")
        return np.asarray(self.frame, np.float64) / float(source_fps)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (lists; NaN kept) for passing through Ray Data rows."""
        return {
            "face": self.face,
            "time_s": None if self.time_s is None else np.asarray(self.time_s).tolist(),
            "frame": None if self.frame is None else np.asarray(self.frame).tolist(),
            "arousal": self.arousal.tolist(),
            "valence": self.valence.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelTrack:
        """Inverse of `to_json`."""
        return cls(
            arousal=np.asarray(d["arousal"], np.float32),
            valence=np.asarray(d["valence"], np.float32),
            time_s=None if d.get("time_s") is None else np.asarray(d["time_s"], np.float64),
            frame=None if d.get("frame") is None else np.asarray(d["frame"], np.int64),
            face=d.get("face"),
        )


@dataclass
class VideoItem:
    """One video to shard: where it is, its split and subject, and its annotated people."""

    dataset: str
    key: str  # the dataset's name for the video (relative path or stem)
    uri: str
    split: str
    subject: str
    labels: list[LabelTrack] = field(default_factory=list)
    synthetic: bool = False  # rendered faces (a manifest's `synthetic` column), not people

    @property
    def video_id(self) -> str:
        """Stable id of the video: the same hash of the URI the batch job uses."""
        return video_id(self.uri)

    def labels_json(self) -> str:
        """The label tracks as one JSON string (NaN allowed)."""
        return json.dumps([t.to_json() for t in self.labels])

    @staticmethod
    def labels_from_json(text: str) -> list[LabelTrack]:
        """Inverse of `labels_json`."""
        return [LabelTrack.from_json(d) for d in json.loads(text or "[]")]


# ---------------------------------------------------------------------------------------------
# Label resampling


def label_step(times: np.ndarray) -> float:
    """Median spacing of annotation times, s (0 when fewer than two)."""
    t = np.sort(np.asarray(times, np.float64))
    d = np.diff(t)
    d = d[d > 0]
    return float(np.median(d)) if d.size else 0.0


def resample_labels(
    label_t: np.ndarray, values: np.ndarray, frame_t: np.ndarray, max_gap_s: float | None = None
) -> np.ndarray:
    """Annotation values at frame times: float32 [len(frame_t)].

    Linear interpolation between valid (finite) annotations; a frame whose nearest valid
    annotation is further than `max_gap_s` (default: the annotation step) gets NaN, so long
    missing stretches and the time outside the annotated span stay unlabelled instead of
    being filled in.
    """
    t = np.asarray(label_t, np.float64)
    y = np.asarray(values, np.float64)
    ft = np.asarray(frame_t, np.float64)
    gap = label_step(t) if max_gap_s is None else float(max_gap_s)
    ok = np.isfinite(t) & np.isfinite(y)
    out = np.full(ft.shape, np.nan, np.float64)
    if not ok.any() or ft.size == 0:
        return out.astype(np.float32)
    order = np.argsort(t[ok], kind="stable")
    tv, yv = t[ok][order], y[ok][order]
    vals = np.interp(ft, tv, yv)
    j = np.clip(np.searchsorted(tv, ft), 1, max(len(tv) - 1, 1))
    near = np.minimum(np.abs(ft - tv[j - 1]), np.abs(ft - tv[np.minimum(j, len(tv) - 1)]))
    keep = near <= gap + 1e-9
    out[keep] = vals[keep]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Files


def list_files(
    root: str, suffixes: Sequence[str], storage: StorageConfig | None = None
) -> list[str]:
    """Every file under `root` (a file, folder or URI) whose name ends with one of
    `suffixes` (case-insensitive), as URIs, sorted. A file `root` is returned as it is."""
    files = find(root, storage)
    if files == [root]:
        return files
    sfx = tuple(s.lower() for s in suffixes)
    return [u for u in files if u.lower().endswith(sfx)]


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root` with '/' separators (the uri itself when outside root)."""
    u = without_scheme(uri).rstrip("/")
    r = without_scheme(root).rstrip("/")
    if r.startswith("./"):
        r = r[2:]
    if u.startswith(r + "/"):
        return u[len(r) + 1 :]
    return u


def stem(uri: str) -> str:
    """File name without its extension."""
    return PurePosixPath(without_scheme(uri)).stem


def index_videos(
    root: str, storage: StorageConfig | None = None, exts: Sequence[str] = VIDEO_EXTS
) -> dict[str, str]:
    """Video files under `root` keyed by relative path AND by stem -> URI. A stem shared by
    several files maps to the first (sorted) and is logged."""
    out: dict[str, str] = {}
    stems: dict[str, str] = {}
    for uri in list_files(root, exts, storage):
        out[relative(uri, root)] = uri
        s = stem(uri)
        if s in stems:
            log.warning("two videos named %s: %s and %s (using the first)", s, stems[s], uri)
            continue
        stems[s] = uri
    for s, uri in stems.items():
        out.setdefault(s, uri)
    return out


# ---------------------------------------------------------------------------------------------
# Splits and subjects

_SPLIT_DIRS = (
    ("train", re.compile(r"^(train|training)([_-]?set)?$", re.I)),
    ("validation", re.compile(r"^(validation|valid|val|devel|development|dev)([_-]?set)?$", re.I)),
    ("test", re.compile(r"^(test|testing)([_-]?set)?$", re.I)),
)
_SPLIT_PREFIX = (
    ("train", re.compile(r"^train", re.I)),
    ("validation", re.compile(r"^(devel|dev|valid|val)", re.I)),
    ("test", re.compile(r"^test", re.I)),
)


def split_from_dirs(uri: str) -> str | None:
    """train / validation / test from a folder name on the path (Train_Set, Validation_Set,
    Devel, dev, Test_Set ...), else None. The file name itself is not looked at."""
    parts = PurePosixPath(without_scheme(uri)).parts[:-1]
    for part in reversed(parts):
        for name, rx in _SPLIT_DIRS:
            if rx.match(part):
                return name
    return None


def split_from_name(name: str) -> str | None:
    """train / validation / test from a name's prefix (Train_DE_01, Devel_..., dev_3)."""
    for split, rx in _SPLIT_PREFIX:
        if rx.match(name):
            return split
    return None


def split_by_subject(subject: str, fractions: Sequence[float]) -> str:
    """A stable split for a subject: sha256 of its name mapped to [0, 1) and cut at the
    cumulative fractions. Independent of which other subjects exist, so adding data never
    moves a person between splits."""
    f = np.asarray(fractions, np.float64)
    f = f / f.sum()
    u = int(hashlib.sha256(subject.encode()).hexdigest()[:12], 16) / float(1 << 48)
    if u < f[0]:
        return "train"
    if u < f[0] + f[1]:
        return "validation"
    return "test"


def read_manifest(uri: str | None, storage: StorageConfig | None = None) -> dict[str, dict]:
    """Optional CSV `video,split[,subject|identity]` -> {video (as written), stem: row}."""
    if not uri:
        return {}
    out: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO(read_text(uri, storage))):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if "video" not in row:
            raise ValueError(f"{uri}: a manifest needs a `video` column")
        if not row.get("subject") and row.get("identity"):
            row["subject"] = row["identity"]
        out[row["video"]] = row
        out.setdefault(stem(row["video"]), row)
    return out


def apply_manifest(items: Iterable[VideoItem], manifest: dict[str, dict]) -> list[VideoItem]:
    """Override split/subject of items listed in the manifest (by key or stem); a true
    `synthetic` column (the synthetic corpus's manifest) marks the item synthetic."""
    out = []
    for it in items:
        row = manifest.get(it.key) or manifest.get(stem(it.key))
        if row:
            if row.get("split"):
                it.split = normalise_split(row["split"])
            if row.get("subject"):
                it.subject = row["subject"]
            if str(row.get("synthetic") or "").lower() in ("true", "1", "yes"):
                it.synthetic = True
        out.append(it)
    return out


def normalise_split(name: str) -> str:
    """'Train_Set', 'devel', 'val' ... -> train | validation | test | pretext."""
    n = name.strip().lower()
    if n == "pretext":
        return n
    for split, rx in _SPLIT_DIRS:
        if rx.match(n):
            return split
    raise ValueError(f"unknown split {name!r} (train, validation, test or pretext)")


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$", re.I)


def is_number(s: str) -> bool:
    """True for a decimal number (also nan/inf)."""
    return bool(_FLOAT.match(s.strip()))
