"""RECOLA as in AVEC 2016: `ratings_gold_standard/{arousal,valence}/{train,dev}_{1..9}.arff`.

ARFF: a header (`@relation`, `@attribute name string`, `@attribute frameTime numeric`,
`@attribute GoldStandard numeric`, `@data`) then rows `name,frameTime,GoldStandard`
(7,501 rows, 0-300 s, 40 ms). The target comes from the folder (`arousal` / `valence`), the
recording from the file stem (also the video stem and the subject); split from the stem's
prefix (train, dev -> validation; test). A file whose stem has none of these prefixes is
refused, naming it, unless data.manifest gives its split (never a silent hash split). There
are no public test labels: report on dev.
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
    normalise_split,
    read_manifest,
    read_text,
    split_from_name,
    stem,
)

log = logging.getLogger(__name__)


def parse_arff(text: str) -> tuple[list[str], np.ndarray]:
    """ARFF text -> (attribute names, data [N, n_attributes] float64; strings and `?` -> NaN).

    Comments (`%`) and blank lines are skipped; quoted values are unquoted.
    """
    names: list[str] = []
    rows: list[list[float]] = []
    in_data = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        low = line.lower()
        if not in_data:
            if low.startswith("@attribute"):
                names.append(line.split(None, 2)[1].strip("'\""))
            elif low.startswith("@data"):
                in_data = True
            continue
        vals = []
        for cell in line.split(","):
            c = cell.strip().strip("'\"")
            try:
                vals.append(float(c))
            except ValueError:
                vals.append(np.nan)
        rows.append(vals)
    if not in_data:
        raise ValueError("no @data section")
    if not rows:
        return names, np.zeros((0, len(names)))
    return names, np.asarray(rows, np.float64)


def parse_gold_standard(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A RECOLA gold-standard ARFF -> (frameTime [N] s, GoldStandard [N])."""
    names, data = parse_arff(text)
    low = [n.lower() for n in names]
    ti = low.index("frametime") if "frametime" in low else 1
    vi = low.index("goldstandard") if "goldstandard" in low else len(names) - 1
    return data[:, ti], data[:, vi]


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """RECOLA recordings with their gold-standard arousal and valence."""
    if not cfg.labels or not cfg.videos:
        raise ValueError("recola needs data.labels (ratings_gold_standard) and data.videos")
    found: dict[str, dict[str, str]] = {}
    for uri in list_files(cfg.labels, (".arff",), storage):
        parent = uri.rstrip("/").rsplit("/", 2)[-2].lower()
        dim = "arousal" if "arousal" in parent else "valence" if "valence" in parent else None
        if dim is None:
            continue
        found.setdefault(stem(uri), {})[dim] = uri
    videos = index_videos(cfg.videos, storage)
    manifest = read_manifest(cfg.manifest, storage)
    items = []
    for name in sorted(found):
        pair = found[name]
        if set(pair) != {"arousal", "valence"}:
            log.warning("recola %s: only %s annotated; skipped", name, list(pair))
            continue
        uri = videos.get(name)
        if uri is None:
            log.warning("recola %s: no video under %s; skipped", name, cfg.videos)
            continue
        ta, a = parse_gold_standard(read_text(pair["arousal"], storage))
        tv, v = parse_gold_standard(read_text(pair["valence"], storage))
        if len(tv) != len(ta) or not np.allclose(tv, ta):
            v = np.interp(ta, tv, v)
        split = split_from_name(name) or (manifest.get(name) or {}).get("split")
        if not split:
            raise ValueError(
                f"recola {pair['arousal']}: the name {name!r} starts with neither train nor "
                "dev (nor test), so its split is unknown: give it in data.manifest "
                "(CSV video,split) or remove the file"
            )
        items.append(
            VideoItem(
                dataset="recola",
                key=name,
                uri=uri,
                split=normalise_split(split),
                subject=name,
                labels=[LabelTrack(a, v, time_s=ta * cfg.time_scale)],
            )
        )
    return items
