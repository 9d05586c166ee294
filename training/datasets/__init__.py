"""Dataset readers: each dataset's annotation files -> `VideoItem`s (video URI, split, subject,
per-person labels), and the clip shards `vaerr preprocess` writes and training reads.

    items = read_dataset(cfg.data, cfg.storage)

Formats (METHOD.md, ../shared/assets/SOURCES.md): SEWA DB, AVEC 2019 CES, RECOLA / AVEC 2016
ARFF, Aff-Wild2, AFEW-VA, LRS3 (unlabelled) and the generic CSV. `data.manifest` overrides
splits and subjects for any of them.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.config import StorageConfig
from schemas.train import DataConfig
from training.datasets import afewva, affwild2, avec2019, generic, lrs3, recola, sewa
from training.datasets.items import (
    VIDEO_EXTS,
    LabelTrack,
    VideoItem,
    apply_manifest,
    list_files,
    read_manifest,
    relative,
    resample_labels,
    split_from_dirs,
    stem,
)

READERS: dict[str, Callable[[DataConfig, StorageConfig | None], list[VideoItem]]] = {
    "generic": generic.read,
    "sewa": sewa.read,
    "avec2019": avec2019.read,
    "recola": recola.read,
    "affwild2": affwild2.read,
    "afewva": afewva.read,
    "lrs3": lrs3.read,
}


def read_dataset(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """Every video of the configured dataset, sorted by key; the manifest applied. With
    `data.keep_unlabelled`, videos under `data.videos` that no annotation names are added,
    unlabelled (split from their folder names, else `pretext`; subject = file stem)."""
    items = READERS[cfg.dataset](cfg, storage)
    if cfg.keep_unlabelled and cfg.videos and cfg.labels:
        seen = {it.uri for it in items}
        for uri in list_files(cfg.videos, VIDEO_EXTS, storage):
            if uri not in seen:
                split = split_from_dirs(uri) or "pretext"
                items.append(VideoItem(cfg.dataset, relative(uri, cfg.videos), uri, split,
                                       stem(uri)))  # fmt: skip
    items = apply_manifest(items, read_manifest(cfg.manifest, storage))
    return sorted(items, key=lambda it: it.key)


__all__ = [
    "READERS",
    "LabelTrack",
    "VideoItem",
    "read_dataset",
    "resample_labels",
]
