"""Several videos through one FacePipeline at once: one owner of the device, fed by many videos.

With one video at a time, the device waits between videos and cannot fill its batches at the
start and end of each video. `FaceFeed` keeps up to `infer.face_videos` videos open: each
decodes `decode_ahead` chunks ahead in a thread of its own (from the pipeline's pool, reused
video after video; PyAV releases the GIL, so decoding overlaps the device work) and keeps its
own FaceStream (tracks, buffered frames). Each round takes the next chunk of every open video,
queues the detector once per frame size over the frames of all of them (`launch_together`),
and hands each video its own detections back; the landmarker then runs once over every video's
faces (`batch_many`: FAN's crops of all videos in its batches), and tracking and crops run per
video. The rounds overlap by one: round r + 1's detections are queued on the device before
round r's are read, so the device works while the host tracks and crops (a GPU never waits
for the host's half of a round; on a CPU the order of the work changes, not the work). One
video is a feed of one (FaceRun iterates through it). A detection or a landmark never spans
frames or videos, so a frame's faces do not depend on what they were batched with
(tests/test_face_feed.py checks timelines within 1e-5).

Memory is bounded by the number of open videos: each holds `decode_ahead` chunks, one staged
chunk on the device, plus its stream's look-ahead (pipeline/faces/stream.py), whatever the
length or number of videos.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.faces.detection import Detections, Pending
from pipeline.faces.stream import FaceStream, Staged
from pipeline.video import FrameChunk

Rows = dict[str, np.ndarray]


class Pipe(Protocol):
    """What the feed uses of a FacePipeline (pipeline/faces/extract.py, which builds on this
    module): its models, its pool of decode threads, its optional timer and a run per uri."""

    detector: Any
    landmarker: Any
    timer: Any

    def decoders(self, n: int) -> ThreadPoolExecutor:
        """A pool of at least n decode threads."""
        ...

    def run(self, uri: str) -> Run:
        """A fresh run of one video."""
        ...


class Run(Protocol):
    """What the feed uses of a FaceRun: open its video, count a chunk, its stream, close."""

    stream: FaceStream | None

    def open(self, stack: ExitStack) -> Iterator[FrameChunk]:
        """The video's chunks (not yet decoded), its reader closed with `stack`."""
        ...

    def count(self, chunk: FrameChunk) -> None:
        """Note a chunk about to be staged."""
        ...

    def close(self) -> None:
        """After the last rows."""
        ...


# Chunks decoded ahead of the one being processed (bounded: memory stays flat).
DECODE_AHEAD = 2
_END = object()


def decode_ahead(
    chunks: Iterable[FrameChunk], depth: int = DECODE_AHEAD, pool: ThreadPoolExecutor | None = None
) -> Iterator[FrameChunk]:
    """Iterate `chunks` in a background thread, at most `depth` chunks ahead of the consumer,
    so decoding the next chunk (PyAV releases the GIL) overlaps the device work on this one.
    Exceptions from decoding are re-raised in the consumer; stopping early (break, an error
    downstream) stops the thread before this generator closes. With `pool`, the thread is
    one of its (long-lived) threads rather than a new one, as FaceFeed does: a new thread per
    video grew the heap (glibc gives new threads new malloc arenas)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for c in chunks:
                while not stop.is_set():
                    try:
                        q.put(c, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: Any = _END
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            item = exc
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    if pool is None:
        t = threading.Thread(target=produce, name="vaerr-decode", daemon=True)
        t.start()
        wait: Any = t.join
    else:
        wait = pool.submit(produce).result
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        wait()


class PendingTogether:
    """Detections of several videos' frames, queued (`launch_together`); `result()` returns
    one list of S_i Detections per input, in order (waiting for the device here)."""

    def __init__(self, sizes: list[int], groups: list[tuple[list[int], Pending]]) -> None:
        self.sizes, self.groups = sizes, groups

    def result(self) -> list[list[Detections]]:
        """One list of Detections per input, in order."""
        out: list[list[Detections]] = [[] for _ in self.sizes]
        for members, pending in self.groups:
            found, start = pending.result(), 0
            for i in members:
                out[i] = found[start : start + self.sizes[i]]
                start += self.sizes[i]
        return out


def launch_together(detector: object, frames: Sequence[torch.Tensor]) -> PendingTogether:
    """Queue whole-frame detection of several videos' frames (each uint8 [S_i, H_i, W_i, 3]
    on the detector's device): one detector call per frame size, frames of the same size
    stacked; returns without waiting for the device."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, f in enumerate(frames):
        if len(f):
            by_shape[tuple(f.shape[1:])].append(i)
    groups = []
    for members in by_shape.values():
        with torch.inference_mode():
            # one video (every FaceRun is a feed of one): its frames as they are, no copy
            parts = [frames[i] for i in members]
            stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
            groups.append((members, detector.launch(stacked)))  # type: ignore[attr-defined]
    return PendingTogether([len(f) for f in frames], groups)


@dataclass
class _Open:
    """One open video of the feed: its position in the input, its run, its chunks."""

    index: int
    run: Run
    chunks: Iterator[FrameChunk]


@dataclass
class _Round:
    """One chunk of each of several videos, staged on the device, with the whole-frame
    detections of the batchable ones queued: (video, its staged chunk, its position among
    the queued inputs or None) per video, and the queued detections."""

    staged: list[tuple[_Open, Staged, int | None]]
    pending: PendingTogether

    def keep(self, indices: set[int]) -> _Round:
        """The round without the videos not in `indices` (failed since it was staged)."""
        return _Round([x for x in self.staged if x[0].index in indices], self.pending)

    @property
    def batchable(self) -> bool:
        """Every video's detections were queued (none needs its tracks to find its faces)."""
        return all(j is not None for _, _, j in self.staged)


@dataclass(frozen=True)
class FeedEvent:
    """What `FaceFeed` yields: rows of video `index` (its FaceRun is `run`), or with
    `done` its end (run.frames / run.tracks / run.info set), or with `error` the exception
    that stopped it (the other videos go on)."""

    index: int
    run: Run
    rows: Rows | None = None
    done: bool = False
    error: BaseException | None = None


Started = Generator[FeedEvent, None, tuple[_Round, list[_Open]]]
"""What `FaceFeed._start` is: its events, then the round and the videos at their end."""


class FaceFeed:
    """Iterate the FeedEvents of `uris` processed together by `pipe` (see the module); `runs`
    (one FaceRun of `pipe` per uri) when the caller holds them already (FaceRun itself)."""

    def __init__(self, pipe: Pipe, uris: Sequence[str], runs: Sequence[Run] | None = None) -> None:
        self.pipe = pipe
        self.uris = list(uris)
        self.runs = list(runs) if runs is not None else [pipe.run(u) for u in self.uris]

    def __iter__(self) -> Iterator[FeedEvent]:
        with ExitStack() as stack:
            live: list[_Open] = []
            pool = self.pipe.decoders(len(self.uris))
            for i, run in enumerate(self.runs):
                try:
                    chunks = decode_ahead(run.open(stack), pool=pool)
                except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                    yield FeedEvent(i, run, error=exc)
                    continue
                stack.callback(chunks.close)  # stop its decode thread before its reader closes
                live.append(_Open(i, run, chunks))
            rnd, ended = yield from self._start(live)
            for v in ended:
                yield from self._finish(v)
            while rnd.staged:
                # One round ahead: the next chunks' detections are queued before this round's
                # are read, so the device works while the host tracks and crops this round.
                # Not where a video's detection needs its tracks (ROI search) or steps are timed.
                ahead = rnd.batchable and self.pipe.timer is None
                if ahead:
                    nxt, ended = yield from self._start([v for v, _, _ in rnd.staged])
                    rnd = rnd.keep({v.index for v, _, _ in nxt.staged} | {v.index for v in ended})
                still = yield from self._complete(rnd)
                if not ahead:
                    nxt, ended = yield from self._start(still)
                keep = {v.index for v in still}
                for v in ended:
                    if v.index in keep:
                        yield from self._finish(v)
                rnd = nxt.keep(keep)

    def _start(self, live: list[_Open]) -> Started:
        """Stage the next chunk of every video of `live` and queue their whole-frame
        detections (one call per frame size); returns the round and the videos at their end."""
        staged, ended = [], []
        for v in live:
            try:
                chunk = next(v.chunks, None)
                if chunk is None:
                    ended.append(v)
                    continue
                v.run.count(chunk)
                staged.append((v, v.run.stream.stage(chunk)))  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                yield FeedEvent(v.index, v.run, error=exc)
        batchable = [k for k, (v, _) in enumerate(staged) if v.run.stream.batchable]  # type: ignore[union-attr]
        pending = launch_together(self.pipe.detector, [staged[k][1].rgb for k in batchable])
        slot = {k: j for j, k in enumerate(batchable)}
        return _Round([(v, st, slot.get(k)) for k, (v, st) in enumerate(staged)], pending), ended

    def _complete(self, rnd: _Round) -> Generator[FeedEvent, None, list[_Open]]:
        """A staged round's detections read, landmarks, tracking and rows; returns the videos
        still open."""
        dets = rnd.pending.result()
        found: dict[int, list[Detections]] = {}  # position in the round -> its detections
        for k, (v, s, j) in enumerate(rnd.staged):
            try:
                found[k] = dets[j] if j is not None else v.run.stream.detect(s.rgb, s.detect_frames)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - this video's, reported as its event
                yield FeedEvent(v.index, v.run, error=exc)
        ready = list(found)
        jobs = [FaceStream.landmark_job(rnd.staged[k][1], found[k]) for k in ready]
        try:  # one landmarker call over every video's faces (FAN fills its batches)
            lms = dict(zip(ready, self.pipe.landmarker.batch_many(jobs)))
        except Exception as exc:  # noqa: BLE001 - each video of the round is retried alone
            for k in ready:
                yield FeedEvent(rnd.staged[k][0].index, rnd.staged[k][0].run, error=exc)
            return []
        still = []
        for k in ready:
            v, s, _ = rnd.staged[k]
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
