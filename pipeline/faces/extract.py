"""One object that turns a video URI into tracked, aligned face rows: decode -> FaceStream.

Models load once in `FacePipeline.__init__` (a Ray actor or a CLI process reuses them across
videos); `FacePipeline.run(uri)` returns an iterable `FaceRun` that streams column batches and
records what it saw (frames, tracks, the decoder's info) for the status row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from typing import Any

import numpy as np
import torch

from pipeline.device import batch_for, resolve_device
from pipeline.faces.detection import FaceDetector
from pipeline.faces.detectors import build_detector
from pipeline.faces.feed import FaceFeed
from pipeline.faces.landmarks import build_landmarker
from pipeline.faces.stream import FaceStream
from pipeline.video import FrameChunk, VideoInfo, VideoReader, frames_per_chunk
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

    def open(self, stack: ExitStack) -> Iterator[FrameChunk]:
        """Open the video (closed with `stack`), set `info` and a fresh `stream`; return its
        analysis-frame chunks (not yet decoded: the iterator decodes)."""
        cfg = self.pipe.cfg
        v = cfg.video
        chunk = batch_for(self.pipe.device, v.chunk_frames, cpu=32, gpu=256)
        # Planes to a GPU (converted there); on a CPU, PyAV's SIMD conversion in the decode
        # thread is cheaper than tensor maths on the host (and overlaps the detector).
        planes = torch.device(self.pipe.device).type != "cpu"
        if cfg.infer.decode_processes:  # in a process of its own (pipeline/faces/procdecode.py)
            video = self.pipe.decode_processes().open(
                self.uri, cfg.storage, v.fps, v.start_s, v.end_s, chunk, v.chunk_mb, planes
            )
            stack.callback(video.close)
            self.info, chunks = video.info, video.chunks()
        else:
            reader = stack.enter_context(VideoReader(self.uri, cfg.storage))
            per_chunk = frames_per_chunk(reader.info, chunk, v.chunk_mb)
            self.info = reader.info
            chunks = reader.chunks(v.fps, v.start_s, v.end_s, per_chunk, planes=planes)
        self.stream = self.pipe.stream(cfg.video.fps)
        return chunks

    def count(self, chunk: FrameChunk) -> None:
        """Note a chunk about to be pushed (frames seen)."""
        self.frames += len(chunk.frame_index)

    def pop_ended(self) -> list[int]:
        """Public ids of the tracks whose last row has been returned since the last call."""
        return self.stream.pop_ended() if self.stream else []

    def close(self) -> None:
        """After the last rows: what the stream saw (tracks, buffered frames)."""
        assert self.stream is not None
        self.tracks = self.stream.tracks_emitted
        self.max_buffered = self.stream.max_buffered

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.pipe.timer is None:  # a feed of one: decode and device overlap the host's work
            with closing(iter(FaceFeed(self.pipe, [self.uri], runs=[self]))) as feed:
                for ev in feed:
                    if ev.error is not None:
                        raise ev.error
                    if ev.rows is not None:
                        yield ev.rows
            return
        # the per-step split (bench): decode on this thread, each step timed on its own
        with ExitStack() as stack:
            timer, chunks = self.pipe.timer, self.open(stack)
            stream = self.stream
            assert stream is not None
            timer.reset_clock()
            for chunk in chunks:
                timer.mark("decode")
                self.count(chunk)
                rows = stream.push(chunk)
                if len(rows["track_id"]):
                    yield rows
                timer.reset_clock()
            rows = stream.finish()
            if len(rows["track_id"]):
                yield rows
            self.close()


class FacePipeline:
    """Decode + detect + landmarks + track + align for any number of videos.

    Components can be injected (tests pass a random-weight FAN); otherwise they are built
    from the config (the detector by `faces.detector.kind`: pipeline/faces/detectors.py), with
    weights resolved through the cache.
    """

    def __init__(
        self,
        cfg: VaerrConfig,
        detector: FaceDetector | None = None,
        landmarker: Any = None,
        mean_face: np.ndarray | None = None,
    ) -> None:
        self.cfg = cfg
        f = cfg.faces
        device = resolve_device(f.device, f.dtype)
        self.detector = detector or build_detector(f.detector, device, cfg.cache_dir, f.dtype)
        self.landmarker = landmarker or build_landmarker(
            f.landmarks, device, cfg.cache_dir, f.dtype, self.detector
        )
        self.mean_face = (
            mean_face if mean_face is not None else load_mean_face(f.align.mean_face, cfg.cache_dir)
        )
        self.device = self.detector.device
        self.timer: Any = None  # a pipeline.faces.timing.StageTimer to split time per step
        self._decoders: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool)
        self._processes: Any = None  # DecodeProcesses, made at the first video that needs it

    def decoders(self, n: int) -> ThreadPoolExecutor:
        """A pool of at least `n` decode threads, kept for the next videos (FaceFeed: each
        open video's decoding needs a thread of its own while it is open)."""
        if self._decoders is None or self._decoders[0] < n:
            if self._decoders is not None:
                self._decoders[1].shutdown(wait=False)
            self._decoders = (n, ThreadPoolExecutor(n, thread_name_prefix="vaerr-decode"))
        return self._decoders[1]

    def decode_processes(self) -> Any:
        """The decode processes of this pipeline (`infer.decode_processes`), kept for the
        next videos: pipeline/faces/procdecode.py."""
        if self._processes is None:
            from pipeline.faces.procdecode import DecodeProcesses

            self._processes = DecodeProcesses()
        return self._processes

    def set_timer(self, timer: Any) -> None:
        """Attach a StageTimer (bench): decode then runs in line and each step is timed."""
        self.timer = timer
        self.detector.timer = timer
        self.landmarker.timer = timer

    def stream(self, fps: float) -> FaceStream:
        """A fresh per-video engine sharing this pipeline's models."""
        return FaceStream(
            self.cfg.faces,
            fps,
            self.detector,
            self.landmarker,
            self.mean_face,
            device=self.device,
            timer=self.timer,
        )

    def run(self, uri: str) -> FaceRun:
        """Stream one video (see FaceRun)."""
        return FaceRun(self, uri)
