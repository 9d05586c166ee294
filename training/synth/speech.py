"""Speech-like mouth motion with a matching voiced audio track, and talking clips.

Part of the synthetic affect generator (see training/synth/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from training.synth.frames import render_video
from training.synth.identity import Identity
from training.synth.motion import AUDIO_RATE


@dataclass(frozen=True)
class Speech:
    """Articulation at the audio rate: `open` (lip opening) and `round` (lip rounding), [N]."""

    open: np.ndarray
    round: np.ndarray
    rate: int


def sample_speech(seconds: float, rng: np.random.Generator, rate: int = AUDIO_RATE) -> Speech:
    """Syllables (0.12-0.3 s raised-cosine bumps) grouped into words and phrases with pauses.

    Roughly 4-5 syllables/s while talking, with 0.15-0.8 s pauses, like conversational speech.
    """
    n = int(round(seconds * rate))
    env = np.zeros(n, np.float32)
    rnd = np.zeros(n, np.float32)
    t = rng.uniform(0.0, 0.6)
    while t < seconds:
        for _ in range(int(rng.integers(1, 8))):  # a word/phrase of syllables
            dur = rng.uniform(0.12, 0.3)
            a, b = int(t * rate), min(int((t + dur) * rate), n)
            if a >= n:
                break
            k = np.arange(b - a) / max(b - a, 1)
            bump = np.sin(np.pi * k) ** 2
            env[a:b] = np.maximum(env[a:b], rng.uniform(0.45, 1.0) * bump)
            rnd[a:b] = np.maximum(rnd[a:b], rng.uniform(0.0, 1.0) * bump)
            t += dur * rng.uniform(0.9, 1.1)
        t += rng.uniform(0.15, 0.8)
    return Speech(open=env, round=rnd, rate=rate)


def speech_at_frames(speech: Speech, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean articulation over each video frame's interval: (open [T], round [T])."""
    edges = (np.arange(n_frames + 1) / fps * speech.rate).round().astype(int)
    edges = np.clip(edges, 0, len(speech.open))
    cs_o = np.concatenate([[0.0], np.cumsum(speech.open, dtype=np.float64)])
    cs_r = np.concatenate([[0.0], np.cumsum(speech.round, dtype=np.float64)])
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    return (
        ((cs_o[edges[1:]] - cs_o[edges[:-1]]) / cnt).astype(np.float32),
        ((cs_r[edges[1:]] - cs_r[edges[:-1]]) / cnt).astype(np.float32),
    )


def synthesize_voice(
    speech: Speech,
    f0: float,
    rng: np.random.Generator,
    arousal: np.ndarray | None = None,
    fps: float = 25.0,
) -> np.ndarray:
    """A voiced, vowel-like signal whose loudness and spectrum follow the articulation.

    Harmonics of f0 (raised up to 15 % by arousal, with slow jitter) shaped by two formant
    peaks: F1 rises with lip opening (300-800 Hz), F2 falls with rounding (2200-900 Hz);
    amplitude = opening. Returns float32 [N] in [-1, 1] at `speech.rate` Hz.
    """
    n = len(speech.open)
    rate = speech.rate
    t = np.arange(n) / rate
    f0_t = f0 * (1 + 0.04 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    if arousal is not None and len(arousal):
        frame_t = np.arange(len(arousal)) / fps
        f0_t = f0_t * (1 + 0.075 * (np.interp(t, frame_t, arousal) + 1))
    phase = 2 * np.pi * np.cumsum(f0_t) / rate
    f1 = 300 + 500 * speech.open
    f2 = 2200 - 1300 * speech.round
    sig = np.zeros(n, np.float64)
    for k in range(1, int(3800 // f0) + 1):
        fk = k * f0_t
        gain = (
            np.exp(-(((fk - f1) / 160) ** 2))
            + 0.6 * np.exp(-(((fk - f2) / 220) ** 2))
            + 0.25 / k
        )  # fmt: skip
        sig += gain * np.sin(k * phase)
    sig *= speech.open
    sig += rng.normal(0, 0.01, n) * (0.2 + speech.open)  # breath noise
    peak = np.max(np.abs(sig)) + 1e-9
    return (0.6 * sig / peak).astype(np.float32)


def render_clip(
    identity: Identity | Sequence[Identity],
    arousal: np.ndarray,
    valence: np.ndarray,
    fps: float,
    size: tuple[int, int] = (360, 640),
    *,
    seed: int = 0,
    speech: bool = True,
    audio_rate: int = AUDIO_RATE,
    noise: float = 2.0,
) -> tuple[Iterator[np.ndarray], np.ndarray | None]:
    """Frames (lazy iterator of uint8 RGB [H, W, 3]) and a matching mono audio track.

    With `speech`, every face talks (its own syllable stream and voice) and the audio is the
    mix of their voices, float32 [round(T / fps * audio_rate)] in [-1, 1]; otherwise audio is
    None and the mouths move with affect only.
    """
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    aro = np.atleast_2d(np.asarray(arousal, np.float32))
    val = np.atleast_2d(np.asarray(valence, np.float32))
    n_frames = aro.shape[1]
    if not speech:
        return render_video(ids, aro, val, fps, size, seed=seed, noise=noise), None
    seconds = n_frames / fps
    opens, rounds, audio = [], [], None
    for i, ident in enumerate(ids):
        rng = np.random.default_rng([seed, 23, i])
        sp = sample_speech(seconds, rng, audio_rate)
        o, r = speech_at_frames(sp, n_frames, fps)
        opens.append(o)
        rounds.append(r)
        voice = synthesize_voice(sp, ident.voice_f0, rng, aro[i], fps)
        audio = voice if audio is None else audio + voice
    assert audio is not None
    audio = (audio / max(1.0, float(np.max(np.abs(audio))))).astype(np.float32)
    frames = render_video(
        ids, aro, val, fps, size, seed=seed, speech_open=np.stack(opens),
        speech_round=np.stack(rounds), noise=noise,
    )  # fmt: skip
    return frames, audio
