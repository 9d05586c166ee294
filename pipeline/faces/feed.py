"""Several videos through one FacePipeline at once: one owner of the device, fed by many videos.

With one video at a time, the device waits between videos and cannot fill its batches at the
start and end of each video. `FaceFeed` keeps up to `infer.face_videos` videos open: each
decodes `decode_ahead` chunks ahead in a thread of its own (from the pipeline's pool, reused
video after video; PyAV releases the GIL, so decoding overlaps the device work) and keeps its
own FaceStream (tracks, buffered frames). Each round takes the next chunk of every open video,
runs the detector once per frame size over the frames of all of them (`detect_together`) and
hands each video its own detections back; the landmarker then runs once over every video's
faces (`batch_many`: FAN's crops of all videos in its batches), and tracking and crops run per
video. A detection or a landmark never spans frames or videos, so a frame's faces do not
depend on what they were batched with (tests/test_face_feed.py checks timelines within 1e-5).

Memory is bounded by the number of open videos: each holds `decode_ahead` chunks plus its
stream's look-ahead (pipeline/faces/stream.py), whatever the length or number of videos.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.faces.detect import Detections
from pipeline.faces.extract import FacePipeline, FaceRun, decode_ahead
from pipeline.faces.stream import FaceStream
from pipeline.video import FrameChunk

Rows = dict[str, np.ndarray]


def detect_together(detector: object, frames: Sequence[torch.Tensor]) -> list[list[Detections]]:
    """Whole-frame detections of several videos' frames (each uint8 [S_i, H_i, W_i, 3] on the
    detector's device): one detector call per frame size, frames of the same size stacked;
    returns one list of S_i Detections per input, in order."""
    out: list[list[Detections]] = [[] for _ in frames]
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, f in enumerate(frames):
        if len(f):
            by_shape[tuple(f.shape[1:])].append(i)
    for members in by_shape.values():
        with torch.inference_mode():
            found = detector(torch.cat([frames[i] for i in members]))  # type: ignore[operator]
        start = 0
        for i in members:
            out[i] = found[start : start + len(frames[i])]
            start += len(frames[i])
    return out


@dataclass
class _Open:
    """One open video of the feed: its position in the input, its run, its chunks."""

    index: int
    run: FaceRun
    chunks: Iterator[FrameChunk]


@dataclass(frozen=True)
class FeedEvent:
    """What `FaceFeed` yields: rows of video `index` (its FaceRun is `run`), or with
    `done` its end (run.frames / run.tracks / run.info set), or with `error` the exception
    that stopped it (the other videos go on)."""

    index: int
    run: FaceRun
    rows: Rows | None = None
    done: bool = False
    error: BaseException | None = None


class FaceFeed:
    """Iterate the FeedEvents of `uris` processed together by `pipe` (see the module)."""

    def __init__(self, pipe: FacePipeline, uris: Sequence[str]) -> None:
        self.pipe = pipe
        self.uris = list(uris)

    def __iter__(self) -> Iterator[FeedEvent]:
        with ExitStack() as stack:
            live: list[_Open] = []
            pool = self.pipe.decoders(len(self.uris))
            for i, uri in enumerate(self.uris):
                run = self.pipe.run(uri)
                try:
                    chunks = decode_ahead(run.open(stack), pool=pool)
                except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                    yield FeedEvent(i, run, error=exc)
                    continue
                stack.callback(chunks.close)  # stop its decode thread before its reader closes
                live.append(_Open(i, run, chunks))
            while live:
                live = yield from self._round(live)

    def _round(self, live: list[_Open]) -> Iterator[FeedEvent]:
        """One chunk of every open video through the device; returns those still open."""
        staged, still = [], []
        for v in live:
            try:
                chunk = next(v.chunks, None)
                if chunk is None:
                    yield from self._finish(v)
                    continue
                v.run.count(chunk)
                staged.append((v, v.run.stream.stage(chunk)))  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                yield FeedEvent(v.index, v.run, error=exc)
        streams = [v.run.stream for v, _ in staged]
        batchable = [k for k, st in enumerate(streams) if st is not None and st.batchable]
        dets = detect_together(self.pipe.detector, [staged[k][1].rgb for k in batchable])
        found = dict(zip(batchable, dets))  # position in `staged` -> its detections
        for k, (v, s) in enumerate(staged):
            if k not in found:
                try:
                    found[k] = v.run.stream.detect(s.rgb, s.detect_frames)  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                    yield FeedEvent(v.index, v.run, error=exc)
        ready = [k for k in range(len(staged)) if k in found]
        jobs = [FaceStream.landmark_job(staged[k][1], found[k]) for k in ready]
        try:  # one landmarker call over every video's faces (FAN fills its batches)
            lms = dict(zip(ready, self.pipe.landmarker.batch_many(jobs)))
        except Exception as exc:  # noqa: BLE001 - each video of the round is retried alone
            for k in ready:
                yield FeedEvent(staged[k][0].index, staged[k][0].run, error=exc)
            return still
        for k in ready:
            v, s = staged[k]
            stream = v.run.stream
            assert stream is not None
            try:
                rows = stream.complete(s, found[k], lms[k])
            except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                yield FeedEvent(v.index, v.run, error=exc)
                continue
            if len(rows["track_id"]):
                yield FeedEvent(v.index, v.run, rows=rows)
            still.append(v)
        return still

    def _finish(self, v: _Open) -> Iterator[FeedEvent]:
        assert v.run.stream is not None
        rows = v.run.stream.finish()
        if len(rows["track_id"]):
            yield FeedEvent(v.index, v.run, rows=rows)
        v.run.close()
        yield FeedEvent(v.index, v.run, done=True)
