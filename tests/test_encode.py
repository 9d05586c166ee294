"""pipeline.encode.write_video: lossless round trips, lossy sanity, audio, rotation, targets."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import fsspec
import numpy as np
import pytest

from pipeline.encode import fps_fraction, write_video


def _decode(src) -> tuple[list[np.ndarray], av.VideoStream | None, list[int]]:
    with av.open(src) as c:
        vs = c.streams.video[0]
        frames, rotations = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            rotations.append(f.rotation)
        return frames, vs.average_rate, rotations


def _decode_audio(path) -> tuple[np.ndarray, int, str]:
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        chunks = [f.to_ndarray() for f in c.decode(audio=0)]
        data = np.concatenate([ch.reshape(-1) for ch in chunks])
        if data.dtype == np.int16:
            data = data.astype(np.float32) / 32768.0
        return data, st.rate, st.codec_context.name


def _random_frames(n=6, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mp4", "libx264"), (".mkv", "libx264rgb"), (".mkv", "ffv1")]
)
def test_lossless_round_trip_is_bit_exact(tmp_path, suffix, codec):
    frames = _random_frames()
    gray = np.tile(np.arange(64, dtype=np.uint8)[None, :] * 4, (48, 1))  # [H, W] gray ramp
    frames.append(gray)
    path = tmp_path / f"v{suffix}"
    write_video(path, frames, 25, codec=codec, lossless=True)
    out, rate, _ = _decode(str(path))
    assert len(out) == len(frames)
    for a, b in zip(frames, out):
        expect = a if a.ndim == 3 else np.repeat(a[:, :, None], 3, 2)
        assert np.array_equal(expect, b)
    assert rate == 25


def test_lossy_default_is_close_and_keeps_rate(tmp_path):
    yy, xx = np.mgrid[0:64, 0:96]
    frames = [((xx * 2 + yy + 5 * i) % 256).astype(np.uint8) for i in range(10)]
    frames = [np.stack([f, 255 - f, f // 2], 2) for f in frames]
    path = tmp_path / "v.mp4"
    write_video(path, frames, 29.97, crf=18)
    out, rate, _ = _decode(str(path))
    assert len(out) == 10
    assert rate == Fraction(2997, 100)
    err = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, out)])
    assert err < 4.0
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_aac_audio_track_in_mp4(tmp_path):
    n_frames, fps, rate = 20, 25, 16000
    n = n_frames * rate // fps
    t = np.arange(n) / rate
    audio = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "a.mp4"
    write_video(path, _random_frames(n_frames, 32, 32), fps, audio=audio, audio_rate=rate)
    got, got_rate, codec = _decode_audio(path)
    assert codec == "aac" and got_rate == rate
    assert n <= len(got) < n + 1024  # the last AAC frame is padded; the start is aligned
    c = np.corrcoef(got[2048 : n - 2048], audio[2048 : n - 2048])[0, 1]
    assert c > 0.95


def test_pcm_audio_track_in_mkv_is_exact_length(tmp_path):
    rate = 16000
    audio = np.random.default_rng(1).uniform(-0.9, 0.9, 8 * rate // 25).astype(np.float32)
    path = tmp_path / "a.mkv"
    write_video(path, _random_frames(8, 32, 32), 25, audio=audio, audio_rate=rate)
    got, got_rate, codec = _decode_audio(path)
    assert codec == "pcm_s16le" and got_rate == rate
    assert len(got) == len(audio)
    assert np.max(np.abs(got - audio)) < 2.0 / 32768


def test_rotation_metadata(tmp_path):
    path = tmp_path / "r.mp4"
    write_video(path, _random_frames(3, 32, 48), 25, rotation=90)
    out, _, rotations = _decode(str(path))
    assert rotations == [90, 90, 90]
    assert out[0].shape == (32, 48, 3)  # pixels are not rotated, only tagged


def test_file_object_and_fsspec_destinations(tmp_path):
    frames = _random_frames(4, 32, 32)
    buf = io.BytesIO()
    write_video(buf, frames, 25, container_format="mp4", lossless=True)
    buf.seek(0)
    out, _, _ = _decode(buf)
    assert all(np.array_equal(a, b) for a, b in zip(frames, out))

    uri = "memory://vaerr-test-encode/clip.mkv"
    write_video(uri, iter(frames), 25, lossless=True)
    with fsspec.open(uri, "rb") as f:
        out, _, _ = _decode(io.BytesIO(f.read()))
    assert all(np.array_equal(a, b) for a, b in zip(frames, out))
    fsspec.filesystem("memory").rm("/vaerr-test-encode", recursive=True)

    local = f"file://{tmp_path / 'f.mp4'}"
    write_video(local, frames, 25)
    assert (tmp_path / "f.mp4").stat().st_size > 0


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "e.mp4", [], 25)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "o.mp4", [np.zeros((31, 32, 3), np.uint8)], 25)
    with pytest.raises(TypeError):
        write_video(tmp_path / "f.mp4", [np.zeros((32, 32, 3), np.float32)], 25)
    with pytest.raises(ValueError, match="earlier frames"):
        write_video(
            tmp_path / "m.mp4",
            [np.zeros((32, 32), np.uint8)] * 2 + [np.zeros((16, 16), np.uint8)],
            25,
        )
    with pytest.raises(ValueError, match="container"):
        write_video(io.BytesIO(), [np.zeros((32, 32), np.uint8)], 25)
    with pytest.raises(ValueError, match="lossless"):
        write_video(
            tmp_path / "l.mp4", [np.zeros((32, 32), np.uint8)], 25, codec="mpeg4", lossless=True
        )


def test_fps_fraction():
    assert fps_fraction(25) == 25
    assert fps_fraction(29.97) == Fraction(2997, 100)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(Fraction(24000, 1001)) == Fraction(24000, 1001)
