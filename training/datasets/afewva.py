"""AFEW-VA: one `<clip>.json` per clip (../shared/assets/SOURCES.md):
`{"actor": ..., "video_id": "001", "frames": {"00000": {"valence": int, "arousal": int,
"landmarks": [...]}, ...}}`. Integers -10..10 are scaled to [-1, 1]; frame keys are source
frame numbers. AFEW-VA ships each clip as numbered PNG frames: encode a clip folder into
`<video_id>.mp4` first (`frames_to_video`). No official split: `data.manifest`, else by actor
(`data.split_fractions`). Subject = the actor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

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
    stem,
)

log = logging.getLogger(__name__)
SCALE = 10.0


def parse_afewva(text: str) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray]:
    """AFEW-VA JSON -> (video_id, actor, frame [N] int, arousal [N], valence [N] in [-1, 1]).

    A frame whose value is missing or null gets NaN.
    """
    d = json.loads(text)
    frames = d.get("frames") or {}
    keys = sorted(frames, key=lambda k: int(k))
    idx = np.asarray([int(k) for k in keys], np.int64)

    def col(name: str) -> np.ndarray:
        vals = [frames[k].get(name) for k in keys]
        return np.asarray([np.nan if x is None else float(x) / SCALE for x in vals], np.float64)

    return str(d.get("video_id", "")), str(d.get("actor", "")), idx, col("arousal"), col("valence")


def frames_to_video(folder: str | Path, out: str | Path, fps: float = 25.0) -> str:
    """Encode a folder of numbered frame images (AFEW-VA's PNGs) into a lossless video."""
    import cv2

    from pipeline.encode import write_video

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))
    if not files:
        raise FileNotFoundError(f"no frame images in {folder}")
    frames = (cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files)
    write_video(str(out), frames, fps, lossless=True)
    return str(out)


def read(cfg: DataConfig, storage: StorageConfig | None = None) -> list[VideoItem]:
    """AFEW-VA clips (as videos) with their per-frame arousal and valence."""
    if not cfg.labels or not cfg.videos:
        raise ValueError("afewva needs data.labels (the JSON files) and data.videos")
    videos = index_videos(cfg.videos, storage)
    items = []
    for uri in list_files(cfg.labels, (".json",), storage):
        vid, actor, idx, a, v = parse_afewva(read_text(uri, storage))
        name = vid or stem(uri)
        video = videos.get(name) or videos.get(stem(uri))
        if video is None:
            log.warning(
                "afewva %s: no video under %s (encode the frames first); skipped", name, cfg.videos
            )
            continue
        subject = actor or name
        items.append(
            VideoItem(
                dataset="afewva",
                key=name,
                uri=video,
                split=split_by_subject(subject, cfg.split_fractions),
                subject=subject,
                labels=[LabelTrack(a, v, frame=idx)],
            )
        )
    return items
