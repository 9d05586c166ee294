"""Decoding in worker processes (`infer.decode_processes`): frames handed over in shared memory.

In threads (the default), decoding shares the face stage's interpreter: PyAV releases the GIL
while it decodes, but the per-frame Python around it (resampling to 25 fps, plane views) and
the stage's own host work (tracking, windows) take turns on one lock, and with several videos
fed to one GPU (`infer.face_videos`) that lock, not the device, sets the pace. Here each open
video decodes in a process of its own (spawned once per face pipeline and reused, video after
video): the process runs the same `VideoReader.chunks` and writes each chunk's arrays (RGB, or
the decoder's Y/U/V planes for a GPU) into one of `DECODE_AHEAD` shared-memory slots, and the
stage copies them out and hands the slot back. So a video's decoded-but-unused frames are
bounded by its slots plus the copies the face stage's look-ahead holds (`decode_ahead`: memory
bounded by the number of open videos, not their length), and only a few hundred bytes of
metadata per chunk go through a pipe.

A worker that dies (killed, out of memory) is one `DecodeWorkerDied` for the video it held
(an environment failure: the job retries the video), and the next video gets a new process.
Errors of the video itself (VideoError: undecodable, not a video) come back as they are.
Nothing here imports torch: a worker starts in about a second.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import weakref
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from pipeline.status import ENVIRONMENT_FAILURE, failure_kind
from pipeline.storage import is_transient
from pipeline.video import FrameChunk, Planes, VideoInfo, VideoReader, frames_per_chunk
from schemas.config import StorageConfig

DECODE_AHEAD = 2  # chunks decoded ahead of the one in use: each a shared-memory slot
_POLL_S = 0.5  # how often a consumer waiting on a chunk checks that its worker lives
_ARRAYS = ("y", "u", "v", "rgb")


class DecodeWorkerDied(RuntimeError):  # noqa: N818 - named like Ray's own death errors
    """The decode process of a video died before the video's end (or failed there for a
    reason of the environment that could not travel back as it was)."""


def _pack(chunk: FrameChunk, slot: SharedMemory) -> dict[str, Any]:
    """Copy a chunk's pixel arrays into `slot`; return the metadata to rebuild it."""
    arrays = {"frames": chunk.frames} if chunk.frames is not None else {}
    p = chunk.planes
    if p is not None:
        arrays.update({k: getattr(p, k) for k in _ARRAYS if getattr(p, k) is not None})
    layout, offset = [], 0
    for key, a in arrays.items():
        a = np.ascontiguousarray(a)
        np.frombuffer(slot.buf, np.uint8, a.nbytes, offset)[:] = a.reshape(-1).view(np.uint8)
        layout.append((key, a.shape, str(a.dtype), offset))
        offset += a.nbytes
    head = None if p is None else (p.fmt, p.matrix, p.full_range, p.rotation)
    return {"index": chunk.frame_index, "time": chunk.time_s, "planes": head, "layout": layout}


def _unpack(meta: dict[str, Any], slot: SharedMemory) -> FrameChunk:
    """The chunk `_pack` wrote, copied out of the slot (which can then be reused)."""
    out: dict[str, np.ndarray] = {}
    for key, shape, dtype, offset in meta["layout"]:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        out[key] = np.frombuffer(slot.buf, np.uint8, n, offset).view(dtype).reshape(shape).copy()
    planes = None
    if meta["planes"] is not None:
        fmt, matrix, full, rotation = meta["planes"]
        planes = Planes(fmt, matrix, full, rotation, *(out.get(k) for k in _ARRAYS))
    return FrameChunk(out.get("frames"), meta["index"], meta["time"], planes)


def _serve(tasks: Any, results: Any, free: Any) -> None:
    """A decode process: for each task, open the video, send its info, then each chunk in a
    free slot (slots are made here, once per size needed, and unlinked at exit)."""
    slots: list[SharedMemory] = []
    try:
        while (task := tasks.get()) is not None:
            seq, uri, storage, fps, start, end, chunk_frames, chunk_mb, planes = task
            try:
                with VideoReader(uri, storage) as reader:
                    info = reader.info
                    n = frames_per_chunk(info, chunk_frames, chunk_mb)
                    size = n * info.width * info.height * 3 + 4096  # RGB or planes, any rotation
                    if not slots or slots[0].size < size:
                        for s in slots:
                            s.close()
                            s.unlink()
                        slots = [SharedMemory(create=True, size=size) for _ in range(DECODE_AHEAD)]
                    results.put(("info", info, [s.name for s in slots]))
                    for chunk in reader.chunks(fps, start, end, n, planes=planes):
                        k = _token(free, seq)
                        if k is None:  # the consumer stopped reading this video
                            break
                        results.put(("chunk", k, _pack(chunk, slots[k])))
                    results.put(("end", reader.info, None))
            except BaseException as exc:  # noqa: BLE001 - the consumer's, with its type
                results.put(("error", _sendable(exc), None))
    finally:
        for s in slots:
            s.close()
            s.unlink()


def _token(free: Any, seq: int) -> int | None:
    """The next free slot of video `seq` (None: stop), skipping tokens left from an earlier
    video (a stale token would let a slot be written twice before it is read)."""
    while True:
        video, k = free.get()
        if video == seq:
            return k


def _sendable(exc: BaseException) -> BaseException:
    """`exc` as the consumer should get it: itself when a pickle round trip keeps what the job
    decides by (its type's failure kind, whether it is transient: a pickled exception loses
    its cause chain), else a stand-in that keeps them (ConnectionError for a transient fault,
    retried like one; RuntimeError otherwise) naming it. One that cannot travel at all would
    be dropped by the queue's feeder thread and leave the consumer waiting."""
    try:
        back = pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to travel
        back = None
    if back is not None and (is_transient(back), failure_kind(back)) == (
        is_transient(exc),
        failure_kind(exc),
    ):
        return back
    text = f"{type(exc).__name__}: {exc}"
    if is_transient(exc):
        return ConnectionError(text)
    if failure_kind(exc) == ENVIRONMENT_FAILURE:  # out of memory, a dead service: pending
        return DecodeWorkerDied(text)
    return RuntimeError(text)


class _Worker:
    """One decode process and its queues (tasks in; info, chunks and ends out; free slots in)."""

    def __init__(self, ctx: Any) -> None:
        self.tasks, self.results, self.free = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=_serve, args=(self.tasks, self.results, self.free), daemon=True
        )
        self.proc.start()
        self.busy = False

    def get(self) -> tuple[str, Any, Any]:
        """The next message; DecodeWorkerDied when the process is gone."""
        while True:
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise DecodeWorkerDied(
                        f"decode process {self.proc.pid} died (exit code {self.proc.exitcode})"
                    ) from None

    def stop(self) -> None:
        if self.proc.is_alive():
            self.tasks.put(None)
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()


class DecodeProcesses:
    """Decode processes of one face pipeline, one per open video, kept for the next videos.
    They stop (and unlink their slots) at `close`, or when this object is collected or the
    interpreter exits; a killed one's slots are unlinked by multiprocessing's resource
    tracker."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")  # no fork of a process holding torch's threads
        self.workers: list[_Worker] = []
        self.seq = 0  # videos opened: tags each video's slot tokens
        self._finalizer = weakref.finalize(self, _stop_all, self.workers)

    def open(
        self,
        uri: str,
        storage: StorageConfig | None,
        fps: float,
        start_s: float | None,
        end_s: float | None,
        chunk_frames: int,
        chunk_mb: int,
        planes: bool,
    ) -> ProcessVideo:
        """Start decoding `uri` in an idle process (a new one if none is idle or alive); raise
        what opening it raised there (VideoError, a storage error)."""
        self.workers[:] = [w for w in self.workers if w.proc.is_alive()]
        worker = next((w for w in self.workers if not w.busy), None)
        if worker is None:
            worker = _Worker(self.ctx)
            self.workers.append(worker)
        worker.busy = True
        self.seq += 1
        task = (self.seq, uri, storage, fps, start_s, end_s, chunk_frames, chunk_mb, planes)
        worker.tasks.put(task)
        try:
            return ProcessVideo(worker, self.seq)
        except BaseException:
            worker.busy = False
            raise

    def close(self) -> None:
        """Stop every process (their slots are unlinked as they exit)."""
        self._finalizer()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()
    workers.clear()


class ProcessVideo:
    """One video decoding in a worker: `info` (updated at the end with what decoding found,
    as VideoReader's is), `chunks()` and `close()`."""

    def __init__(self, worker: _Worker, seq: int) -> None:
        self.worker, self.seq = worker, seq
        kind, info, names = worker.get()
        if kind == "error":
            raise info
        self.info: VideoInfo = info
        self.slots = [SharedMemory(name=n) for n in names]
        for k in range(len(self.slots)):
            worker.free.put((seq, k))
        self.ended = False

    def chunks(self) -> Iterator[FrameChunk]:
        """The video's analysis-frame chunks, in order, copied out of shared memory."""
        while True:
            kind, payload, meta = self.worker.get()
            if kind == "error":
                self.ended = True
                raise payload
            if kind == "end":
                self.ended = True
                vars(self.info).update(vars(payload))
                return
            chunk = _unpack(meta, self.slots[payload])
            self.worker.free.put((self.seq, payload))
            yield chunk

    def close(self) -> None:
        """Stop reading: the worker finishes this video early and becomes idle again. A
        worker that died is left for `DecodeProcesses.open` to replace."""
        try:
            if not self.ended and self.worker.proc.is_alive():
                self.worker.free.put((self.seq, None))
                while True:  # drain to this video's last message: the next one starts clean
                    kind, _, _ = self.worker.get()
                    if kind in ("end", "error"):
                        break
        except DecodeWorkerDied:
            pass
        finally:
            for s in self.slots:
                s.close()
            self.worker.busy = False
