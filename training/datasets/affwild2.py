"""Aff-Wild2 / ABAW VA: one `<video>.txt` per annotated person (../shared/assets/SOURCES.md).

Line 1 is `valence,arousal` (note the order); then one `v,a` line per video frame, floats in
[-1, 1]; `-5,-5` marks frames without a valid annotation (NaN here). Frame i of the video is
line i + 2, so labels are indexed by source frame and turned into seconds with the video's
own frame rate. Videos with two annotated people have `<video>_left.txt` and
`<video>_right.txt`: the suffix picks the face by horizontal position. Split from the folder
(Train_Set / Validation_Set); subject = the video name.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from schemas.config import StorageConfig
from schemas.train import DataConfig
from training.datasets.items import (
    LabelTrack,
    VideoItem,
    index_videos,
    list_files,
    read_text,
    split_by_subject,
    split_from_dirs,
    stem,
)

log = logging.getLogger(__name__)
MISSING = -5.0


def parse_affwild2(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Aff-Wild2 VA text -> (valence [N], arousal [N]) per source frame; -5 -> NaN."""
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or [c.strip().lower() for c in lines[0].split(",")] != ["valence", "arousal"]:
        raise ValueError("Aff-Wild2 VA file must start with the line `valence,arousal`")
    vals = []
    for ln in lines[1:]:
        if not ln:
            continue
        v, a = (float(c) for c in ln.split(",")[:2])
        vals.append((v, a))
    arr = np.asarray(vals, np.float64).reshape(-1, 2)
    arr[arr <= MISSING + 1e-6] = np.nan  # -5 marks a frame without a valid annotation
    return arr[:, 0], arr[:, 1]


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """Aff-Wild2 videos, one LabelTrack per annotated person (face left/right when two)."""
    if not cfg.labels or not cfg.videos:
        raise ValueError("affwild2 needs data.labels and data.videos")
    videos = index_videos(cfg.videos, storage)
    per_video: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    for uri in list_files(cfg.labels, (".txt",), storage):
        name = stem(uri)
        face = None
        for side in ("left", "right"):
            if name.endswith(f"_{side}"):
                name, face = name[: -len(side) - 1], side
        per_video[name].append((face, uri))
    items = []
    for name in sorted(per_video):
        uri = videos.get(name)
        if uri is None:
            log.warning("affwild2 %s: no video under %s; skipped", name, cfg.videos)
            continue
        tracks = []
        split = None
        for face, label_uri in sorted(per_video[name], key=lambda x: str(x[0])):
            v, a = parse_affwild2(read_text(label_uri, storage))
            tracks.append(LabelTrack(a, v, frame=np.arange(len(v)), face=face))
            split = split or split_from_dirs(label_uri)
        items.append(
            VideoItem(
                dataset="affwild2",
                key=name,
                uri=uri,
                split=split or split_from_dirs(uri) or split_by_subject(name, cfg.split_fractions),
                subject=name,
                labels=tracks,
            )
        )
    return items
