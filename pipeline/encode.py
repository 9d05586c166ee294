"""Write videos (and an optional mono audio track) with PyAV.

Used to make test media and the synthetic corpus, and by `vaerr render`. Small on purpose: one
function, `write_video`, that streams frames into a container without holding them in memory.

Lossless mode. `lossless=True` encodes RGB directly, with no RGB->YUV conversion, so decoding
with ``frame.to_ndarray(format="rgb24")`` gives back exactly the pixels that went in (any frame,
not only gray ones):

- ``codec="libx264"`` / ``"libx264rgb"`` (default) -> libx264rgb, pix_fmt rgb24, ``qp=0``
  (H.264 High 4:4:4 Predictive, lossless). Works in .mp4, .mkv and .mov; note that most
  browsers / hardware players do not play 4:4:4 RGB H.264, so use it for data, not viewing.
- ``codec="ffv1"`` -> FFV1 with pix_fmt bgr0 (lossless intra codec); use a .mkv/.avi file.

A YUV codec at qp=0 is *not* bit-exact for RGB input (the colour conversion rounds), which is
why lossless mode does not use ``libx264`` + ``yuv444p``.

Rotation. PyAV 18 writes the container display matrix
(``VideoStream.set_display_rotation``), i.e. the same metadata phones write; readers see it as
``VideoFrame.rotation`` (counter-clockwise degrees). The pixels themselves are not rotated.

Destinations. A local path, a writable binary file object (give ``container_format``), or any
fsspec URI (``s3://...``, ``memory://...``): remote files are written to a local temporary file
first (MP4 needs a seekable output to write its index) and uploaded when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from pipeline.storage import is_remote, local_output, without_scheme

AUDIO_CODEC_FOR_FORMAT = {"matroska": "pcm_s16le", "avi": "pcm_s16le", "wav": "pcm_s16le"}
"""Default audio codec per container; AAC elsewhere (mp4/mov only accept a few codecs)."""

_EXT_FORMAT = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".avi": "avi", ".webm": "webm"}


def fps_fraction(fps: float | Fraction) -> Fraction:
    """An exact rational frame rate: 25 -> 25/1, 29.97 -> 2997/100, 30000/1001 stays NTSC.

    Containers store rates and time bases as rationals; a float like 29.97002997 must map back
    to 30000/1001, not to a huge denominator.
    """
    if isinstance(fps, Fraction):
        return fps
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001 * 1000 // 10)


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    """[H, W] gray or [H, W, 3] RGB (any integer/bool dtype in 0..255) -> contiguous uint8 RGB."""
    a = np.asarray(frame)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"frames must be [H, W] or [H, W, 3], got shape {a.shape}")
    if a.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {a.dtype}")
    return np.ascontiguousarray(a)


def _video_settings(
    codec: str, crf: int, lossless: bool, pix_fmt: str
) -> tuple[str, str, dict[str, str]]:
    """(codec name, pix_fmt, encoder options) for the requested quality."""
    if lossless:
        if codec in ("libx264", "libx264rgb"):
            return "libx264rgb", "rgb24", {"qp": "0", "preset": "veryfast"}
        if codec == "ffv1":
            return "ffv1", "bgr0", {}
        raise ValueError(f"lossless=True supports codec libx264/libx264rgb/ffv1, not {codec!r}")
    options: dict[str, str] = {}
    if codec in ("libx264", "libx264rgb", "libx265"):
        options = {"crf": str(int(crf)), "preset": "veryfast"}
    return codec, pix_fmt, options


def _container_format(dest: str | os.PathLike | IO[bytes], container_format: str | None) -> str:
    if container_format:
        return container_format
    if isinstance(dest, str | os.PathLike):
        ext = Path(os.fspath(dest)).suffix.lower()
        if ext in _EXT_FORMAT:
            return _EXT_FORMAT[ext]
    raise ValueError(f"cannot infer the container format of {dest!r}; pass container_format=")


def write_video(
    path_or_file: str | os.PathLike | IO[bytes],
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    codec: str = "libx264",
    crf: int = 18,
    lossless: bool = False,
    pix_fmt: str = "yuv420p",
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    rotation: int | None = None,
    audio_codec: str | None = None,
    container_format: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Encode `frames` (streamed, any length) to a video file, with an optional audio track.

    Args:
        path_or_file: local path, ``file://`` URI, fsspec URI (uploaded after writing), or a
            seekable binary file object (then ``container_format`` is required).
        frames: uint8 RGB [H, W, 3] or gray [H, W] arrays, all the same size. For yuv420p
            (the default, what every player plays) H and W must be even.
        fps: frame rate in frames/s; frame i gets presentation time i / fps seconds.
        codec, crf, pix_fmt: lossy encoder settings (crf: x264 constant rate factor, 0..51).
        lossless: bit-exact RGB round trip (see the module docstring); ignores crf/pix_fmt.
        audio: float32 mono samples in [-1, 1], shape [N] (or [N, 1]); clipped to [-1, 1].
            Encoded as AAC in mp4/mov, 16-bit PCM in mkv/avi (``audio_codec`` overrides). PCM
            decodes back to exactly N samples; AAC starts aligned (the mp4 edit list hides the
            encoder priming) but the last 1024-sample frame is padded, so a decoder returns
            N..N+1023 samples.
        audio_rate: audio sample rate in Hz.
        rotation: counter-clockwise display rotation in degrees (container metadata only).
        audio_codec: override the audio codec name.
        container_format: FFmpeg muxer name, e.g. "mp4", "matroska"; inferred from the suffix.
        storage_options: fsspec keyword arguments for remote destinations (pipeline.storage).
    """
    if isinstance(path_or_file, str) and is_remote(path_or_file):
        uri = path_or_file
        fmt = _container_format(uri, container_format)
        with local_output(uri, storage_options) as tmp:  # written here, uploaded when whole
            write_video(
                tmp, frames, fps, codec=codec, crf=crf, lossless=lossless, pix_fmt=pix_fmt,
                audio=audio, audio_rate=audio_rate, rotation=rotation, audio_codec=audio_codec,
                container_format=fmt,
            )  # fmt: skip
        return
    if isinstance(path_or_file, str):
        path_or_file = without_scheme(path_or_file)  # file:// URIs are local paths

    fmt = _container_format(path_or_file, container_format)
    rate = fps_fraction(fps)
    vcodec, vpix, voptions = _video_settings(codec, crf, lossless, pix_fmt)
    samples = _prepare_audio(audio)
    acodec = audio_codec or AUDIO_CODEC_FOR_FORMAT.get(fmt, "aac")

    target = (
        os.fspath(path_or_file) if isinstance(path_or_file, str | os.PathLike) else path_or_file
    )
    with av.open(target, mode="w", format=fmt) as container:
        _encode(container, frames, rate, (vcodec, vpix, voptions), rotation, samples, acodec,
                audio_rate)  # fmt: skip


def _encode(
    container: Any,
    frames: Iterable[np.ndarray],
    rate: Fraction,
    video: tuple[str, str, dict[str, str]],
    rotation: int | None,
    samples: np.ndarray | None,
    acodec: str,
    audio_rate: int,
) -> None:
    """Encode and mux `frames` (and `samples`, interleaved per frame) into an open container;
    `video` is (codec, pix_fmt, options) from _video_settings."""
    vcodec, vpix, voptions = video
    vstream: av.VideoStream | None = None
    astream = None
    audio_pos = 0  # samples already sent to the audio encoder
    n = 0
    for frame in frames:
        rgb = _as_rgb(frame)
        if vstream is None:
            vstream = _open_video_stream(container, vcodec, vpix, voptions, rate, rgb, rotation)
            if samples is not None:
                astream = container.add_stream(acodec, rate=audio_rate, layout="mono")
        elif rgb.shape[:2] != (vstream.height, vstream.width):
            raise ValueError(
                f"frame {n} is {rgb.shape[:2]}, earlier frames were "
                f"{(vstream.height, vstream.width)}"
            )
        vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        vf.pts = n
        container.mux(vstream.encode(vf))
        n += 1
        if astream is not None:
            # Interleave: send audio up to the end of this frame so the muxer never has to
            # buffer a whole track.
            upto = min(len(samples), int(round(n / rate * audio_rate)))
            audio_pos = _mux_audio(container, astream, samples, audio_pos, upto)
    if vstream is None:
        raise ValueError("write_video needs at least one frame")
    container.mux(vstream.encode(None))
    if astream is not None:
        _mux_audio(container, astream, samples, audio_pos, len(samples))
        container.mux(astream.encode(None))


def _open_video_stream(
    container: av.container.OutputContainer,
    codec: str,
    pix_fmt: str,
    options: dict[str, str],
    rate: Fraction,
    first: np.ndarray,
    rotation: int | None,
) -> av.VideoStream:
    h, w = first.shape[:2]
    if pix_fmt in ("yuv420p", "yuvj420p", "nv12") and (h % 2 or w % 2):
        raise ValueError(f"{pix_fmt} needs even frame sizes, got {h}x{w}; crop or pad the frames")
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    stream.time_base = 1 / rate
    stream.codec_context.time_base = 1 / rate
    if rotation is not None and rotation % 360:
        stream.set_display_rotation(int(rotation))
    return stream


def _prepare_audio(audio: np.ndarray | None) -> np.ndarray | None:
    """float mono [N] or [N, 1] in [-1, 1] -> contiguous float32 [N] (clipped)."""
    if audio is None:
        return None
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"audio must be mono [N] or [N, 1], got shape {a.shape}")
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


def _mux_audio(
    container: av.container.OutputContainer,
    stream: av.AudioStream,
    samples: np.ndarray,
    start: int,
    stop: int,
) -> int:
    """Encode samples[start:stop] (float32 mono) and mux the packets; returns `stop`.

    PyAV's audio encoder re-buffers to the codec's frame size (1024 for AAC), so chunks of
    any length are fine. The sample format is converted to what the codec wants (fltp, s16).
    """
    if stop <= start:
        return start
    chunk = samples[start:stop][None, :]
    frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
    frame.sample_rate = stream.rate
    frame.pts = start
    frame.time_base = Fraction(1, stream.rate)
    container.mux(stream.encode(frame))
    return stop
