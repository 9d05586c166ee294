"""SEWA DB: `<segment>_{Arousal|Valence}_{A|V|AV}_Aligned.csv` (METHOD.md, "Datasets").

Each file's first column is time (seconds; `data.time_scale` converts other units), every
other column one annotator; the label is their mean (annotators missing at a time are left
out of the mean). Delimiter `;`, `,` or tab, detected per file; header rows (any line that
is not all numbers) are skipped. Condition V (annotated watching the video without sound) is
the default. The subject is the segment's `S###` token; splits come from the folder names
(Train_Set / Validation_Set / Test_Set) of the annotation or video path.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from schemas.config import StorageConfig
from schemas.train import DataConfig
from training.datasets.items import (
    LabelTrack,
    VideoItem,
    index_videos,
    is_number,
    list_files,
    read_text,
    split_by_subject,
    split_from_dirs,
)

log = logging.getLogger(__name__)

FILE_RE = re.compile(r"^(?P<seg>.+)_(?P<dim>Arousal|Valence)_(?P<cond>A|V|AV)_Aligned\.csv$", re.I)
SUBJECT_RE = re.compile(r"(?:^|[_\-.])(S\d{3})(?=$|[_\-.])", re.I)


def _delimiter(line: str) -> str:
    for d in (";", "\t", ","):
        if d in line:
            return d
    return ","


def parse_sewa_csv(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One SEWA aligned annotation file -> (time [N] as written, mean of annotators [N] with
    NaN where none rated, number of annotators)."""
    times, means, n_ann = [], [], 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        delim = _delimiter(line)
        cells = [c.strip() for c in line.split(delim)]  # empty cell = annotator missing
        if not cells or not all(is_number(c) for c in cells if c):
            continue  # header or comment row
        vals = [float(c) if c else np.nan for c in cells]
        if len(vals) < 2:
            continue
        n_ann = max(n_ann, len(vals) - 1)
        ann = np.asarray(vals[1:], np.float64)
        times.append(vals[0])
        means.append(np.nanmean(ann) if np.isfinite(ann).any() else np.nan)
    if not times:
        raise ValueError("no numeric rows")
    return np.asarray(times, np.float64), np.asarray(means, np.float64), n_ann


def subject_of(segment: str) -> str:
    """The `S###` token of a SEWA segment name (upper case), else the segment name."""
    m = SUBJECT_RE.search(segment)
    return m.group(1).upper() if m else segment


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """SEWA videos with their mean-of-annotators arousal and valence (condition
    `cfg.sewa_condition`)."""
    if not cfg.labels or not cfg.videos:
        raise ValueError("sewa needs data.labels (annotation folder) and data.videos")
    files: dict[str, dict[str, str]] = {}
    for uri in list_files(cfg.labels, (".csv",), storage):
        m = FILE_RE.match(uri.rsplit("/", 1)[-1])
        if not m or m["cond"].upper() != cfg.sewa_condition:
            continue
        files.setdefault(m["seg"], {})[m["dim"].lower()] = uri
    videos = index_videos(cfg.videos, storage)
    items = []
    for seg in sorted(files):
        pair = files[seg]
        if set(pair) != {"arousal", "valence"}:
            log.warning(
                "sewa %s: only %s annotated under %s; skipped", seg, list(pair), cfg.sewa_condition
            )
            continue
        uri = videos.get(seg)
        if uri is None:
            log.warning("sewa %s: no video found under %s; skipped", seg, cfg.videos)
            continue
        ta, a, _ = parse_sewa_csv(read_text(pair["arousal"], storage))
        tv, v, _ = parse_sewa_csv(read_text(pair["valence"], storage))
        if len(tv) != len(ta) or not np.allclose(tv, ta):
            v = np.interp(ta, tv, v)  # put valence on arousal's time grid
        split = split_from_dirs(pair["arousal"]) or split_from_dirs(uri)
        subject = subject_of(seg)
        items.append(
            VideoItem(
                dataset="sewa",
                key=seg,
                uri=uri,
                split=split or split_by_subject(subject, cfg.split_fractions),
                subject=subject,
                labels=[LabelTrack(a, v, time_s=ta * cfg.time_scale)],
            )
        )
    return items
