"""Evaluation metrics (METHOD.md, "Evaluation"): CCC by the AVEC convention (all sequences
concatenated), the mean of per-sequence CCC, Pearson r and RMSE.

Inputs are numpy arrays or torch tensors of any matching shape; computation is float64 numpy.
Frames where the prediction or the target is non-finite, or where `mask` is False, are ignored.
A statistic with no valid frame (or zero variance where it divides) is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ccc",
    "ccc_concat",
    "ccc_mean_per_sequence",
    "evaluate_sequences",
    "pearson",
    "rmse",
]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bfloat16 / float16
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _pairs(pred: Any, target: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(pred), _np(target)
    if p.shape != y.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {y.shape}")
    valid = np.isfinite(p) & np.isfinite(y)
    if mask is not None:
        valid &= _np(mask).astype(bool)
    return p[valid], y[valid]


def _ccc(p: np.ndarray, y: np.ndarray) -> float:
    if p.size == 0:
        return float("nan")
    mp, my = p.mean(), y.mean()
    cov = np.mean((p - mp) * (y - my))
    denom = p.var() + y.var() + (mp - my) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def ccc(pred: Any, target: Any, mask: Any = None) -> float:
    """Concordance correlation coefficient over all valid elements (population moments)."""
    return _ccc(*_pairs(pred, target, mask))


def pearson(pred: Any, target: Any, mask: Any = None) -> float:
    """Pearson correlation over all valid elements."""
    p, y = _pairs(pred, target, mask)
    if p.size == 0:
        return float("nan")
    dp, dy = p - p.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dp * dp) * np.sum(dy * dy))
    return float(np.sum(dp * dy) / denom) if denom > 0 else float("nan")


def rmse(pred: Any, target: Any, mask: Any = None) -> float:
    """Root mean squared error over all valid elements (target units)."""
    p, y = _pairs(pred, target, mask)
    return float(np.sqrt(np.mean((p - y) ** 2))) if p.size else float("nan")


def _concat(
    preds: Sequence[Any], targets: Sequence[Any], masks: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predicted sequences for {len(targets)} targets")
    if masks is not None and len(masks) != len(preds):
        raise ValueError(f"{len(masks)} masks for {len(preds)} sequences")
    ps, ys = [], []
    for i, (p, y) in enumerate(zip(preds, targets)):
        pp, yy = _pairs(p, y, None if masks is None else masks[i])
        ps.append(pp)
        ys.append(yy)
    if not ps:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ps), np.concatenate(ys)


def ccc_concat(
    preds: Sequence[Any], targets: Sequence[Any], masks: Sequence[Any] | None = None
) -> float:
    """AVEC convention: CCC of all sequences' valid frames concatenated into one series."""
    return _ccc(*_concat(preds, targets, masks))


def ccc_mean_per_sequence(
    preds: Sequence[Any], targets: Sequence[Any], masks: Sequence[Any] | None = None
) -> float:
    """Mean over sequences of each sequence's CCC (sequences whose CCC is NaN are skipped)."""
    values = [
        ccc(p, y, None if masks is None else masks[i])
        for i, (p, y) in enumerate(zip(preds, targets))
    ]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_sequences(
    preds: Sequence[Any], targets: Sequence[Any], masks: Sequence[Any] | None = None
) -> dict[str, float]:
    """All metrics of one target over a list of sequences (each [T_i] or any shape).

    Returns {"ccc": AVEC concatenated CCC, "ccc_seq_mean", "pearson", "rmse", "frames",
    "sequences"} (counts as floats for a uniform type).
    """
    p, y = _concat(preds, targets, masks)
    return {
        "ccc": _ccc(p, y),
        "ccc_seq_mean": ccc_mean_per_sequence(preds, targets, masks),
        "pearson": pearson(p, y),
        "rmse": rmse(p, y),
        "frames": float(p.size),
        "sequences": float(len(preds)),
    }
