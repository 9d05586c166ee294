"""The generic label format: CSV `video,time_s,arousal,valence[,face]` (what the synthetic
corpus writes; any dataset can be converted to it).

`video` is a path relative to `data.videos` (or a file stem); `time_s` seconds from the
video's first frame; `face` (optional) the labelled face's left-to-right index (0 =
leftmost) when a video shows several people. Empty or `nan` values are missing. Splits and
subjects come from `data.manifest` (`video,split[,subject|identity]`, as the synthetic
corpus's manifest.csv), else split by subject = video stem (`data.split_fractions`).
Without `data.labels`, every video under `data.videos` is an unlabelled `pretext` item (any
folder of talking faces with sound, for the pretext tasks).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict

import numpy as np

from schemas.config import StorageConfig
from schemas.train import DataConfig
from training.datasets.items import (
    VIDEO_EXTS,
    LabelTrack,
    VideoItem,
    index_videos,
    list_files,
    read_text,
    relative,
    split_by_subject,
    stem,
)

log = logging.getLogger(__name__)
REQUIRED = ("video", "time_s", "arousal", "valence")


def parse_generic(text: str) -> dict[tuple[str, str | None], LabelTrack]:
    """Generic CSV text -> {(video, face or None): LabelTrack}, rows sorted by time."""
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"generic label CSV lacks columns {missing} (has {cols})")
    rows: dict[tuple[str, str | None], list[tuple[float, float, float]]] = defaultdict(list)

    def num(s: str | None) -> float:
        s = (s or "").strip()
        return float(s) if s and s.lower() != "nan" else np.nan

    for r in reader:
        r = {(k or "").strip(): v for k, v in r.items()}
        face = (r.get("face") or "").strip() or None
        key = ((r["video"] or "").strip(), face)
        rows[key].append((num(r["time_s"]), num(r["arousal"]), num(r["valence"])))
    out = {}
    for key, vals in rows.items():
        arr = np.asarray(sorted(vals, key=lambda x: x[0]), np.float64)
        out[key] = LabelTrack(arr[:, 1], arr[:, 2], time_s=arr[:, 0], face=key[1])
    return out


def read_unlabelled(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """Every video under `data.videos`, unlabelled, split `pretext` (talking faces with
    audio for the pretext tasks); subject = the parent folder's name."""
    if not cfg.videos:
        raise ValueError("generic needs data.videos")
    items = []
    for uri in list_files(cfg.videos, VIDEO_EXTS, storage):
        rel = relative(uri, cfg.videos)
        parent = rel.rsplit("/", 2)[-2] if "/" in rel else stem(rel)
        items.append(VideoItem("generic", rel, uri, "pretext", parent))
    return items


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """Videos named in the generic CSV(s) under `data.labels`; without `data.labels`, every
    video under `data.videos`, unlabelled (`read_unlabelled`)."""
    if not cfg.labels:
        return read_unlabelled(cfg, storage)
    if not cfg.videos:
        raise ValueError("generic needs data.videos")
    tracks: dict[str, list[LabelTrack]] = defaultdict(list)
    for uri in list_files(cfg.labels, (".csv",), storage):
        for (video, _face), tr in parse_generic(read_text(uri, storage)).items():
            tracks[video].append(tr)
    videos = index_videos(cfg.videos, storage)
    items = []
    for video in sorted(tracks):
        uri = videos.get(video) or videos.get(stem(video))
        if uri is None:
            log.warning("generic %s: no video under %s; skipped", video, cfg.videos)
            continue
        subject = stem(video)
        items.append(
            VideoItem(
                dataset="generic",
                key=video,
                uri=uri,
                split=split_by_subject(subject, cfg.split_fractions),
                subject=subject,
                labels=sorted(tracks[video], key=lambda t: str(t.face)),
            )
        )
    return items
