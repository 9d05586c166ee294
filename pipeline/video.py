"""Streaming decode of any fsspec URI with PyAV, resampled to the analysis rate by timestamps.

A video is never held in memory: `VideoReader.chunks` yields at most `chunk_frames` frames at a
time. Resampling rule: output frame k (at t_k = k / fps seconds from the first frame) shows the
latest source frame whose timestamp is <= t_k (the frame on screen at that instant), so 50->25
keeps every second frame, 30->25 drops every sixth and variable frame rates come out regular.
Rotation metadata (display matrix) is applied so frames come out upright.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipeline.errors import VideoError  # here too: callers import it from pipeline.video
from pipeline.source import NotRegularFile, open_source
from pipeline.status import ENVIRONMENT_FAILURE, failure_kind
from schemas.config import StorageConfig

log = logging.getLogger(__name__)

# Timestamps within this many seconds count as equal (container tick rounding).
_EPS = 1e-4


# Chroma subsampling (horizontal, vertical) of the planar YUV formats handed out as planes.
SUBSAMPLING = {
    "yuv420p": (2, 2),
    "yuvj420p": (2, 2),
    "yuv422p": (2, 1),
    "yuvj422p": (2, 1),
    "yuv444p": (1, 1),
    "yuvj444p": (1, 1),
}
# AVColorSpace values -> colour matrix; 2 (unspecified) is BT.601, swscale's default.
_MATRIX = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}


@dataclass
class Planes:
    """Consecutive decoded frames of one video as the decoder produced them (not rotated).

    Planar YUV: y uint8 [N, H, W], u and v uint8 [N, ceil(H/sy), ceil(W/sx)] for `fmt` in
    SUBSAMPLING, with `matrix` ("bt601" or "bt709") and `full_range`. Any other format or
    matrix: `rgb` uint8 [N, H, W, 3] converted by PyAV (y, u, v None). `rotation`:
    counter-clockwise degrees of the display matrix, applied after conversion
    (pipeline.faces.colour.planes_to_device).
    """

    fmt: str
    matrix: str
    full_range: bool
    rotation: int
    y: np.ndarray | None = None
    u: np.ndarray | None = None
    v: np.ndarray | None = None
    rgb: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rgb if self.rgb is not None else self.y)


def frame_planes(frame: Any) -> tuple[str, str, bool, tuple[np.ndarray, ...]]:
    """(format, matrix, full_range, arrays) of one av.VideoFrame: its own Y, U, V planes
    (uint8 views without the line padding) when the format and matrix are supported, else
    ("rgb24", "", True, (PyAV's RGB [H, W, 3],))."""
    fmt = frame.format.name
    matrix = _MATRIX.get(int(frame.colorspace or 2))
    if fmt in SUBSAMPLING and matrix is not None:
        full = fmt.startswith("yuvj") or int(frame.color_range or 0) == 2
        arrays = tuple(
            np.frombuffer(p, np.uint8)[: p.height * p.line_size].reshape(p.height, p.line_size)[
                :, : p.width
            ]
            for p in frame.planes[:3]
        )
        return fmt, matrix, full, arrays
    return "rgb24", "", True, (frame.to_ndarray(format="rgb24"),)


def to_rgb(frame: Any, reformatter: VideoReformatter) -> np.ndarray:
    """uint8 RGB [H, W, 3] of one av.VideoFrame through a reformatter kept for the stream:
    it keeps swscale's context between frames, which `frame.to_ndarray(format="rgb24")`
    builds anew for every frame (1.5-6x faster on the asset clips, equal pixels:
    bench/rgb_convert.py)."""
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


class FrameChunk(NamedTuple):
    """Consecutive analysis frames. frames: uint8 RGB [N, H, W, 3] (None when the chunk
    carries `planes` instead); frame_index: int32 [N] (at the analysis rate); time_s: float64
    [N] (seconds from the video's first frame); planes: the decoder's planes (see Planes)."""

    frames: np.ndarray | None
    frame_index: np.ndarray
    time_s: np.ndarray
    planes: Planes | None = None


@dataclass
class VideoInfo:
    """What the container says, plus what decoding found. Sizes are upright (after rotation)."""

    width: int
    height: int
    src_fps: float
    duration_s: float
    rotation: int
    has_audio: bool
    codec: str
    decoded_frames: int = 0
    emitted_frames: int = 0
    decode_errors: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)
    last_time_s: float = 0.0  # timestamp of the last decoded frame
    range_end_s: float = float("inf")  # end of the requested time range
    container_note: str | None = None  # damage the container shows (a cut-off MPEG stream)


def _upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display matrix: PyAV's `rotation` is counter-clockwise degrees."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _map_error(exc: Exception, uri: str) -> VideoError:
    if isinstance(exc, NotRegularFile):
        return VideoError(str(exc))  # "not a regular file: FIFO"
    if isinstance(exc, FileNotFoundError):
        return VideoError(f"not found: {uri}")
    if isinstance(exc, PermissionError):
        return VideoError(f"access denied: {uri}")
    if isinstance(exc, av.error.FFmpegError):
        return VideoError(f"not a decodable video ({type(exc).__name__}: {exc.strerror})")
    return VideoError(f"cannot open ({type(exc).__name__}: {exc})")


def frames_per_chunk(info: VideoInfo, chunk_frames: int, chunk_mb: int) -> int:
    """Frames per decoded chunk: `chunk_frames`, fewer where that many frames of this size
    (as RGB) would pass `chunk_mb` MiB."""
    frame_bytes = max(1, info.width * info.height * 3)
    return max(1, min(chunk_frames, (chunk_mb << 20) // frame_bytes))


class VideoReader:
    """Open a video URI for streaming decode. Use as a context manager.

    Raises VideoError with a one-line reason for missing, empty, corrupt or audio-only input.
    """

    def __init__(self, uri: str, storage: StorageConfig | None = None) -> None:
        self.uri = uri
        self._file: Any = None
        self._container: Any = None
        try:
            self._file = open_source(uri, storage)  # never blocks for good (a FIFO, a stall)
            if self._file.size == 0:
                raise VideoError("empty file (0 bytes)")
            self._container = av.open(self._file, mode="r", metadata_errors="ignore")
        except VideoError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            if failure_kind(exc) == ENVIRONMENT_FAILURE:
                raise  # outages, out of memory: not a property of the video (a rerun retries)
            raise _map_error(exc, uri) from None
        if not self._container.streams.video:
            self.close()
            raise VideoError("no video stream (audio-only or not a video)")
        fmt = self._container.format.name
        if fmt == "image2" or fmt.endswith("_pipe"):
            self.close()
            raise VideoError(f"a still image ({fmt}), not a video")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        src_fps = float(rate) if rate else 0.0
        duration = 0.0
        if self._stream.duration and self._stream.time_base:
            duration = float(self._stream.duration * self._stream.time_base)
        elif self._container.duration:
            duration = self._container.duration / av.time_base
        w, h = self._stream.codec_context.width, self._stream.codec_context.height
        note = _mpeg_cut_note(self._file, fmt)
        self.info = VideoInfo(
            width=w,
            height=h,
            src_fps=src_fps,
            duration_s=duration,
            rotation=0,
            has_audio=bool(self._container.streams.audio),
            codec=self._stream.codec_context.name,
            container_note=note,
        )

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the container and the underlying file."""
        for obj in (self._container, self._file):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing a broken stream must not mask the real error
                    pass
        self._container = self._file = None

    def _source_frames(self, start_s: float) -> Iterator[tuple[float, Any]]:
        """(time from the first frame, av.VideoFrame) in presentation order; corrupt packets
        are skipped and recorded as gaps in `info`."""
        stream, info = self._stream, self.info
        tb = float(stream.time_base) if stream.time_base else 1.0 / max(info.src_fps, 1.0)
        origin: float | None = None
        if stream.start_time is not None:
            origin = float(stream.start_time * stream.time_base)
        elif start_s > 0:
            origin = 0.0  # no declared start: a seek must not move the time origin
        if start_s > 0:
            target = (origin or 0.0) + start_s
            self._container.seek(int(target / tb), stream=stream, backward=True)
        last_t: float | None = None
        pending_error = False
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                info.decode_errors += 1
                pending_error = True
                continue
            for frame in frames:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    continue
                t_abs = pts * tb
                if origin is None:
                    origin = t_abs
                t = t_abs - origin
                if last_t is not None and t <= last_t - _EPS:
                    continue  # out-of-order or duplicate timestamp after damage
                if pending_error and last_t is not None:
                    info.gaps.append((last_t, t))
                pending_error = False
                info.decoded_frames += 1
                if info.decoded_frames == 1:
                    info.rotation = int(round(frame.rotation or 0))
                    if info.rotation % 180:
                        info.width, info.height = info.height, info.width
                last_t = info.last_time_s = t
                yield t, frame

    def chunks(
        self,
        fps: float,
        start_s: float | None = None,
        end_s: float | None = None,
        chunk_frames: int = 32,
        planes: bool = False,
    ) -> Iterator[FrameChunk]:
        """Yield the analysis frames in chunks of at most `chunk_frames` (see module doc):
        upright RGB in `frames`, or with `planes=True` the decoder's planes in `planes`
        (`frames` None; converted later on the face stage's device)."""
        info = self.info
        if end_s is not None:
            info.range_end_s = end_s
        start = start_s or 0.0
        k = max(0, math.ceil(start * fps - _EPS))
        end = end_s if end_s is not None else math.inf
        buf: list[Any] = []
        idx: list[int] = []
        prev: tuple[float, Any] | None = None
        prev_img: Any = None
        rgb = VideoReformatter()  # one per stream: frame.to_ndarray builds a converter per frame

        def emit_until(limit: float) -> Iterator[FrameChunk]:
            nonlocal k, prev_img
            while prev is not None and k / fps < limit - _EPS and k / fps < end - _EPS:
                if prev_img is None:
                    if planes:
                        prev_img = frame_planes(prev[1])
                    else:
                        prev_img = _upright(to_rgb(prev[1], rgb), info.rotation)
                if buf and planes and prev_img[:3] != buf[0][:3]:
                    yield self._flush(buf, idx, fps)  # format changed mid-stream: new chunk
                buf.append(prev_img)
                idx.append(k)
                k += 1
                if len(buf) >= chunk_frames:
                    yield self._flush(buf, idx, fps)

        try:
            for t, frame in self._source_frames(start):
                if prev is None:
                    # Nothing to show before the first decoded frame (only after a seek).
                    k = max(k, math.ceil(t * fps - _EPS))
                else:
                    yield from emit_until(t)
                if k / fps >= end - _EPS:
                    break
                prev, prev_img = (t, frame), None
            if prev is not None:
                frame_dur = 1.0 / info.src_fps if info.src_fps > 0 else 1.0 / fps
                stop = prev[0] + frame_dur
                if info.duration_s > prev[0]:
                    stop = min(stop, info.duration_s)
                yield from emit_until(stop)
        except av.error.FFmpegError as exc:
            if failure_kind(exc) == ENVIRONMENT_FAILURE:
                raise  # ENOMEM mid-decode is no truncation: never an ok with fewer frames
            if info.decoded_frames == 0:
                raise _map_error(exc, self.uri) from None
            info.decode_errors += 1
            log.warning("%s: decoding stopped early: %s", self.uri, exc)
        if buf:
            yield self._flush(buf, idx, fps)
        if info.decoded_frames == 0:
            raise VideoError("no decodable video frames")

    def _flush(self, buf: list[Any], idx: list[int], fps: float) -> FrameChunk:
        fi = np.asarray(idx, dtype=np.int32)
        frames, planes = None, None
        if isinstance(buf[0], tuple):
            fmt, matrix, full = buf[0][:3]
            arrays = [np.stack([b[3][i] for b in buf]) for i in range(len(buf[0][3]))]
            planes = Planes(fmt, matrix, full, self.info.rotation)
            if fmt == "rgb24":
                planes.rgb = arrays[0]
            else:
                planes.y, planes.u, planes.v = arrays
        else:
            frames = np.stack(buf)
        self.info.emitted_frames += len(buf)
        buf.clear()
        idx.clear()
        return FrameChunk(frames, fi, fi.astype(np.float64) / fps, planes)


MPEG_TAIL_BYTES = 1 << 16
"""Bytes read from the end of an MPEG program stream to check that its last pack is whole."""


def mpeg_ps_cut(tail: bytes) -> bool:
    """True when the last packet of an MPEG program stream (`tail`: the file's last bytes) ends
    past the end of the file: the file was cut off. Such files report an ok duration (FFmpeg
    estimates it from the size), so decoding alone cannot tell. The walk starts at the last
    system start code (00 00 01 B9..FF: pack headers and PES packets; elementary streams
    never contain them) and follows the packet lengths. A file ending in the program end code,
    padding or a whole packet is not cut; a tail without a start code is not judged."""
    i = len(tail)
    while True:
        i = tail.rfind(b"\x00\x00\x01", 0, i)
        if i < 0:
            return False
        if i + 3 < len(tail) and tail[i + 3] >= 0xB9:
            break
    p = i
    while p < len(tail):
        if p + 6 > len(tail):
            return True
        if tail[p : p + 3] != b"\x00\x00\x01":
            return False  # not a packet we can walk: do not guess
        code = tail[p + 3]
        if code == 0xB9:  # MPEG_program_end_code
            return False
        if code == 0xBA:  # pack header: MPEG-2 14 bytes plus stuffing, MPEG-1 12 bytes
            if p + 14 > len(tail):
                return True
            p += 14 + (tail[p + 13] & 7) if tail[p + 4] >> 6 == 1 else 12
            continue
        p += 6 + int.from_bytes(tail[p + 4 : p + 6], "big")
    return p > len(tail)


def _mpeg_cut_note(f: Any, fmt: str) -> str | None:
    """A note when an MPEG program or transport stream file was cut off (see `mpeg_ps_cut`;
    transport streams: a size that is not whole 188- or 192-byte packets), else None. Reads
    the file's tail and restores the position the demuxer left."""
    if fmt not in ("mpeg", "mpegts") or not hasattr(f, "seek"):
        return None
    try:
        pos = f.tell()
        size = f.seek(0, 2)
        if fmt == "mpegts":
            cut = size % 188 != 0 and size % 192 != 0
        else:
            f.seek(max(0, size - MPEG_TAIL_BYTES))
            cut = mpeg_ps_cut(f.read(MPEG_TAIL_BYTES))
        f.seek(pos)
    except (OSError, ValueError):
        return None
    return f"the MPEG stream ends mid-packet at {size} bytes (truncated)" if cut else None


def decode_warnings(info: VideoInfo | None) -> str | None:
    """One line on damage seen while decoding (None when clean): corrupt packets skipped and
    the gaps they left, seconds from the first frame."""
    if info is None:
        return None
    notes = []
    if info.decode_errors:
        gaps = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in info.gaps[:10])
        more = f" (+{len(info.gaps) - 10} more)" if len(info.gaps) > 10 else ""
        notes.append(f"{info.decode_errors} undecodable packets skipped")
        if gaps:
            notes.append(f"gaps at {gaps}{more}")
    if info.container_note:
        notes.append(info.container_note)
    frame_s = 1.0 / info.src_fps if info.src_fps > 0 else 0.1
    expected_end = min(info.duration_s, info.range_end_s)
    if info.decoded_frames and expected_end - info.last_time_s > 2 * frame_s + 0.5:
        notes.append(
            f"decoding stopped at {info.last_time_s:.2f} s of {info.duration_s:.2f} s "
            "(damaged or truncated)"
        )
    return "; ".join(notes) or None


def read_audio(
    uri: str,
    rate: int = 16000,
    storage: StorageConfig | None = None,
) -> np.ndarray:
    """The first audio track as float32 mono [N] at `rate` Hz in [-1, 1]; empty if none.

    Loaded whole: it is for training clips (seconds to minutes), not for hour-long inputs.
    """
    try:
        f = open_source(uri, storage)
    except NotRegularFile as exc:
        raise _map_error(exc, uri) from None
    with f:
        try:
            container = av.open(f, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise _map_error(exc, uri) from None
        with container:
            if not container.streams.audio:
                return np.zeros(0, np.float32)
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    if not parts:
        return np.zeros(0, np.float32)
    # Resampling can overshoot full scale slightly; keep the documented [-1, 1] range.
    return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)
