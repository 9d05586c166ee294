"""One object that turns a video URI into tracked, aligned face rows: decode -> FaceStream.

Models load once in `FacePipeline.__init__` (a Ray actor or a CLI process reuses them across
videos); `FacePipeline.run(uri)` returns an iterable `FaceRun` that streams column batches and
records what it saw (frames, tracks, the decoder's info) for the status row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.device import resolve_device
from pipeline.faces.detect import RetinaFaceDetector
from pipeline.faces.landmarks import build_landmarker
from pipeline.faces.stream import FaceStream
from pipeline.video import VideoInfo, VideoReader
from pipeline.weights import resolve_file
from schemas.config import VaerrConfig

log = logging.getLogger(__name__)


def load_mean_face(uri: str, cache: str | None = None) -> np.ndarray:
    """The 68x2 mean face (256x256 template frame) from a path, URI or URL."""
    arr = np.load(resolve_file(uri, cache), allow_pickle=False)
    if arr.shape != (68, 2):
        raise ValueError(f"mean face {uri} has shape {arr.shape}, expected (68, 2)")
    return arr.astype(np.float64)


class FaceRun:
    """Iterate to stream row batches of one video; afterwards `info`, `frames` and `tracks`
    describe it. Raises pipeline.video.VideoError for undecodable input."""

    def __init__(self, pipe: FacePipeline, uri: str) -> None:
        self.pipe = pipe
        self.uri = uri
        self.info: VideoInfo | None = None
        self.frames = 0
        self.tracks = 0
        self.max_buffered = 0
        self.stream: FaceStream | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        cfg = self.pipe.cfg
        with VideoReader(self.uri, cfg.storage) as reader:
            self.info = reader.info
            stream = self.stream = self.pipe.stream(cfg.video.fps)
            v = cfg.video
            frame_bytes = max(1, reader.info.width * reader.info.height * 3)
            per_chunk = max(1, min(v.chunk_frames, (v.chunk_mb << 20) // frame_bytes))
            for chunk in reader.chunks(v.fps, v.start_s, v.end_s, per_chunk):
                self.frames += len(chunk.frame_index)
                rows = stream.push(chunk)
                if len(rows["track_id"]):
                    yield rows
            rows = stream.finish()
            if len(rows["track_id"]):
                yield rows
            self.tracks = stream.tracks_emitted
            self.max_buffered = stream.max_buffered


class FacePipeline:
    """Decode + detect + landmarks + track + align for any number of videos.

    Components can be injected (tests pass a random-weight FAN); otherwise they are built
    from the config, with weights resolved through the cache.
    """

    def __init__(
        self,
        cfg: VaerrConfig,
        detector: Any = None,
        landmarker: Any = None,
        mean_face: np.ndarray | None = None,
    ) -> None:
        self.cfg = cfg
        f = cfg.faces
        device = resolve_device(f.device, f.dtype)
        self.detector = detector or RetinaFaceDetector(
            f.detector, device, cfg.cache_dir, dtype=f.dtype
        )
        self.landmarker = landmarker or build_landmarker(
            f.landmarks, device, cfg.cache_dir, f.dtype
        )
        self.mean_face = (
            mean_face if mean_face is not None else load_mean_face(f.align.mean_face, cfg.cache_dir)
        )

    def stream(self, fps: float) -> FaceStream:
        """A fresh per-video engine sharing this pipeline's models."""
        return FaceStream(self.cfg.faces, fps, self.detector, self.landmarker, self.mean_face)

    def run(self, uri: str) -> FaceRun:
        """Stream one video (see FaceRun)."""
        return FaceRun(self, uri)
