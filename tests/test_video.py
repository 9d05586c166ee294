"""Streaming decode: exact resampling by timestamps on lossless synthetic clips, ranges,
rotation, audio, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.encode import write_video
from pipeline.video import VideoError, VideoReader, read_audio


def numbered_frames(n: int, h: int = 32, w: int = 48):
    """Frame i is filled with gray level 2*i (lossless codecs give it back exactly)."""
    for i in range(n):
        yield np.full((h, w, 3), (2 * i) % 256, np.uint8)


def decode_all(path, fps=25.0, **kw):
    with VideoReader(str(path)) as r:
        chunks = list(r.chunks(fps, **kw))
        info = r.info
    frames = np.concatenate([c.frames for c in chunks])
    idx = np.concatenate([c.frame_index for c in chunks])
    times = np.concatenate([c.time_s for c in chunks])
    return frames, idx, times, info, chunks


@pytest.mark.parametrize("src_fps,n_src", [(25, 50), (30, 60), (50, 100)])
def test_resample_to_25_is_exact(tmp_path, src_fps, n_src):
    path = tmp_path / f"n{src_fps}.mkv"
    write_video(path, numbered_frames(n_src), src_fps, lossless=True)
    frames, idx, times, info, _ = decode_all(path, chunk_frames=7)
    assert info.decoded_frames == n_src
    n_out = n_src * 25 // src_fps  # 2 s of video at 25 fps
    assert len(frames) == n_out
    np.testing.assert_array_equal(idx, np.arange(n_out))
    np.testing.assert_allclose(times, np.arange(n_out) / 25.0)
    # Output frame k shows the source frame on screen at t = k/25: floor(k * src / 25).
    expected_src = (np.arange(n_out) * src_fps) // 25
    np.testing.assert_array_equal(frames[:, 0, 0, 0], (2 * expected_src) % 256)


def test_chunks_bound_memory_and_time_range(tmp_path):
    path = tmp_path / "n.mkv"
    write_video(path, numbered_frames(100), 25, lossless=True)
    frames, idx, times, _, chunks = decode_all(path, start_s=1.0, end_s=3.0, chunk_frames=8)
    assert max(len(c.frames) for c in chunks) <= 8
    np.testing.assert_array_equal(idx, np.arange(25, 75))
    np.testing.assert_array_equal(frames[:, 0, 0, 0], (2 * np.arange(25, 75)) % 256)


def test_rotation_metadata_is_applied(tmp_path):
    img = np.zeros((32, 48, 3), np.uint8)
    img[:8, :8] = 255  # a white top-left corner marks orientation
    path = tmp_path / "rot.mp4"
    write_video(path, [img] * 5, 25, lossless=True, rotation=90)
    frames, _, _, info, _ = decode_all(path)
    assert info.rotation == 90 and (info.width, info.height) == (32, 48)
    assert frames.shape[1:3] == (48, 32)
    np.testing.assert_array_equal(frames[0], np.rot90(img, 1))


def test_audio_track_resampled_to_16k_mono(tmp_path):
    sr = 16000
    t = np.arange(sr * 2) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "a.mkv"
    write_video(path, numbered_frames(50), 25, audio=tone, audio_rate=sr)
    audio = read_audio(str(path), 16000)
    assert audio.dtype == np.float32 and abs(len(audio) - len(tone)) < 1100
    spec = np.abs(np.fft.rfft(audio[:sr]))
    assert abs(np.argmax(spec) - 440) <= 2  # 1 Hz bins
    audio8 = read_audio(str(path), 8000)
    assert abs(len(audio8) - len(tone) // 2) < 600


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty"),
        (b"\x00garbage" * 1000, "not a decodable video"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=reason):
        decode_all(path)


def test_missing_and_audio_only_and_truncated(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        decode_all(tmp_path / "nope.mp4")
    # audio-only: a WAV file
    import wave

    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, np.int16).tobytes())
    with pytest.raises(VideoError, match="no video stream"):
        decode_all(wav)
    # mp4 cut in half: the moov atom (index) at the end is lost
    full = tmp_path / "full.mp4"
    write_video(full, numbered_frames(50), 25)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError):
        decode_all(cut)
