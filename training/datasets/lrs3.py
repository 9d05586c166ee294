"""LRS3 (unlabelled talking faces with audio, for pretext tasks):
`{pretrain,trainval,test}/<speaker>/<id>.mp4` (+ `<id>.txt` transcripts, unused).

Subject = the speaker folder; split `pretext` for pretrain/trainval, `test` for test (a
held-out pretext set).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.config import StorageConfig
from schemas.train import DataConfig
from training.datasets.items import VideoItem, list_files, relative


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """Every LRS3 video under `data.videos`, unlabelled."""
    if not cfg.videos:
        raise ValueError("lrs3 needs data.videos (the folder holding pretrain/trainval/test)")
    items = []
    for uri in list_files(cfg.videos, (".mp4",), storage):
        rel = relative(uri, cfg.videos)
        parts = PurePosixPath(rel).parts
        speaker = parts[-2] if len(parts) >= 2 else PurePosixPath(rel).stem
        subset = parts[-3].lower() if len(parts) >= 3 else ""
        items.append(
            VideoItem(
                dataset="lrs3",
                key=rel,
                uri=uri,
                split="test" if subset == "test" else "pretext",
                subject=speaker,
            )
        )
    return items
