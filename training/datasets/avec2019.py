"""AVEC 2019 CES (a SEWA subset): `name;timestamp;arousal;valence;liking`, 0.1 s step.

One or more `;`-separated files with that header; rows are grouped by `name` (e.g.
`Train_DE_01`), which is also the video's file stem and the subject. Split from the name's
prefix: Train -> train, Devel -> validation, Test -> test. Timestamps are seconds.
"""

from __future__ import annotations

import logging

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
    split_from_name,
)

log = logging.getLogger(__name__)
COLUMNS = ("name", "timestamp", "arousal", "valence", "liking")


def parse_ces(text: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """CES label text -> {name: (timestamp [N] s, arousal [N], valence [N])}, rows sorted by
    time. Header lines (starting with `name`) may repeat (concatenated files)."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        cells = [c.strip().strip("'\"") for c in line.split(";")]
        if cells[0].lower() == "name":
            head = [c.lower() for c in cells]
            if head[: len(COLUMNS)] != list(COLUMNS)[: len(head)]:
                raise ValueError(f"unexpected CES header {cells}")
            continue
        if len(cells) < 4:
            raise ValueError(f"CES row needs name;timestamp;arousal;valence: {line!r}")

        def num(s: str) -> float:
            return float(s) if s and s.lower() not in ("?", "nan") else np.nan

        rows.setdefault(cells[0], []).append((num(cells[1]), num(cells[2]), num(cells[3])))
    out = {}
    for name, r in rows.items():
        arr = np.asarray(sorted(r), np.float64)
        out[name] = (arr[:, 0], arr[:, 1], arr[:, 2])
    return out


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """AVEC 2019 CES videos with their gold-standard arousal and valence."""
    if not cfg.labels or not cfg.videos:
        raise ValueError("avec2019 needs data.labels and data.videos")
    seqs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for uri in list_files(cfg.labels, (".csv",), storage):
        seqs.update(parse_ces(read_text(uri, storage)))
    videos = index_videos(cfg.videos, storage)
    items = []
    for name in sorted(seqs):
        uri = videos.get(name)
        if uri is None:
            log.warning("avec2019 %s: no video under %s; skipped", name, cfg.videos)
            continue
        t, a, v = seqs[name]
        items.append(
            VideoItem(
                dataset="avec2019",
                key=name,
                uri=uri,
                split=split_from_name(name) or split_by_subject(name, cfg.split_fractions),
                subject=name,
                labels=[LabelTrack(a, v, time_s=t * cfg.time_scale)],
            )
        )
    return items
