"""Audio features per video frame: the target LiRA predicts from the face (METHOD.md).

Built in: log-mel filterbanks (80 bands, 25 ms Hann window, 10 ms hop at 16 kHz, HTK mel
scale), computed with `torch.stft` and a numpy mel matrix (torchaudio is not a dependency).
Pluggable: `data.audio.extractor = "package.module:function"` names any callable
`function(audio_f32 [N], rate_hz, **data.audio.kwargs) -> [M, D]` that returns one feature
vector every `hop_ms` (e.g. a wrapper around a frozen PASE+ encoder: 256-d at 100 Hz).

Either way the features are stacked per video frame: frame k (covering k/fps .. (k+1)/fps s)
gets the `stack` feature vectors at k/fps + j/(stack*fps), j = 0..stack-1 (4 x 10 ms per
40 ms frame at 25 fps), concatenated -> [T, stack * D].
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from schemas.train import AudioFeatureConfig

Extractor = Callable[[np.ndarray, int], np.ndarray]


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters on the STFT bins: float32 [n_mels, n_fft // 2 + 1].

    Filter i rises from mel point i to i+1 and falls to i+2 (n_mels + 2 points equally
    spaced in mel between fmin and fmax); peak 1, no area normalisation.
    """
    fmax = rate / 2.0 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= rate / 2.0 + 1e-9:
        raise ValueError(f"need 0 <= fmin < fmax <= rate/2, got {fmin}, {fmax}, rate {rate}")
    bins = np.linspace(0.0, rate / 2.0, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (bins[None, :] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - bins[None, :]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(up, down), 0.0, None).astype(np.float32)


class LogMel:
    """Log-mel filterbank energies: audio float32 [N] at `rate` -> float32 [M, n_mels],
    one frame every hop_ms (frame m centred at m * hop), M = 1 + N // hop."""

    def __init__(self, cfg: AudioFeatureConfig | None = None) -> None:
        self.cfg = cfg or AudioFeatureConfig()
        c = self.cfg
        self.win = int(round(c.win_ms * c.rate / 1000.0))
        self.hop = int(round(c.hop_ms * c.rate / 1000.0))
        if self.win > c.n_fft:
            raise ValueError(f"audio window {self.win} samples exceeds n_fft {c.n_fft}")
        self.mel = torch.from_numpy(mel_filterbank(c.n_mels, c.n_fft, c.rate, c.fmin, c.fmax))
        self.window = torch.hann_window(self.win)

    def __call__(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """See the class docstring; `rate` must equal the configured rate."""
        if rate != self.cfg.rate:
            raise ValueError(f"LogMel configured for {self.cfg.rate} Hz, got {rate} Hz audio")
        x = torch.as_tensor(np.asarray(audio, np.float32))
        if x.numel() < 2:
            return np.zeros((0, self.cfg.n_mels), np.float32)
        pad = self.cfg.n_fft // 2
        if x.numel() <= pad:  # reflect padding needs more samples than the pad
            x = torch.nn.functional.pad(x, (0, pad + 1 - x.numel()))
        spec = torch.stft(
            x,
            n_fft=self.cfg.n_fft,
            hop_length=self.hop,
            win_length=self.win,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [F, M]
        power = spec.real**2 + spec.imag**2
        mel = self.mel @ power  # [n_mels, M]
        return torch.log(mel + self.cfg.log_floor).T.contiguous().numpy().astype(np.float32)


def load_callable(path: str) -> Callable[..., Any]:
    """Import `package.module:function` (or `package.module.function`)."""
    mod, sep, name = path.partition(":")
    if not sep:
        mod, _, name = path.rpartition(".")
    if not mod or not name:
        raise ValueError(f"extractor {path!r} is not 'package.module:function'")
    fn = getattr(importlib.import_module(mod), name, None)
    if not callable(fn):
        raise ValueError(f"extractor {path!r} is not a callable")
    return fn


def build_extractor(cfg: AudioFeatureConfig) -> Extractor:
    """The configured extractor as `f(audio [N], rate) -> [M, D]`."""
    if cfg.extractor == "logmel":
        return LogMel(cfg)
    fn = load_callable(cfg.extractor)
    kwargs = dict(cfg.kwargs)
    return lambda audio, rate: np.asarray(fn(audio, rate, **kwargs), np.float32)


def stack_size(cfg: AudioFeatureConfig, fps: float) -> int:
    """Feature frames per video frame: cfg.stack, else round(1000 / (fps * hop_ms))."""
    return cfg.stack or max(1, int(round(1000.0 / (fps * cfg.hop_ms))))


def stack_per_frame(
    feats: np.ndarray, n_frames: int, fps: float, hop_ms: float, stack: int
) -> np.ndarray:
    """Per-hop features [M, D] -> per-video-frame [n_frames, stack * D] (see module doc).

    Feature indices past the audio's end repeat the last frame (audio a little shorter than
    the video); audio with no feature frame at all gives zeros.
    """
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be [M, D], got shape {feats.shape}")
    m, d = feats.shape
    if m == 0:
        return np.zeros((n_frames, stack * d), np.float32)
    k = np.arange(n_frames, dtype=np.float64)[:, None]
    j = np.arange(stack, dtype=np.float64)[None, :]
    t = (k + j / stack) / fps  # seconds
    idx = np.clip(np.floor(t * 1000.0 / hop_ms + 1e-6).astype(np.int64), 0, m - 1)
    return feats[idx].reshape(n_frames, stack * d)


def normalise(feats: np.ndarray, how: str) -> np.ndarray:
    """Per-utterance standardisation of each dimension ('utterance') or none."""
    if how == "none" or len(feats) == 0:
        return feats
    mu = feats.mean(0, keepdims=True)
    sd = feats.std(0, keepdims=True)
    return ((feats - mu) / np.maximum(sd, 1e-5)).astype(np.float32)


def frame_features(
    audio: np.ndarray,
    rate: int,
    n_frames: int,
    fps: float,
    cfg: AudioFeatureConfig,
    extractor: Extractor | None = None,
) -> np.ndarray:
    """Audio [N] at `rate` -> float32 [n_frames, stack * D] aligned to video frames 0..n-1."""
    ex = extractor or build_extractor(cfg)
    feats = normalise(np.asarray(ex(audio, rate), np.float32), cfg.normalise)
    return stack_per_frame(feats, n_frames, fps, cfg.hop_ms, stack_size(cfg, fps))


def feature_dim(cfg: AudioFeatureConfig, fps: float, extractor: Extractor | None = None) -> int:
    """Width of the stacked per-frame feature (runs the extractor on 0.2 s of silence)."""
    ex = extractor or build_extractor(cfg)
    d = np.asarray(ex(np.zeros(int(math.ceil(0.2 * cfg.rate)), np.float32), cfg.rate)).shape[-1]
    return int(d) * stack_size(cfg, fps)
