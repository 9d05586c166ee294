"""CCC (AVEC concatenated and per-sequence), Pearson r and RMSE on numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import losses
from training.metrics import (
    ccc,
    ccc_concat,
    ccc_mean_per_sequence,
    evaluate_sequences,
    pearson,
    rmse,
)


def _reference_ccc(p: np.ndarray, y: np.ndarray) -> float:
    """Independent formula: numpy's biased covariance matrix."""
    cov = np.cov(np.stack([p, y]), bias=True)
    return 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (p.mean() - y.mean()) ** 2)


@pytest.fixture
def y() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.tanh(np.cumsum(rng.normal(0, 0.1, 500)))


def test_perfect_and_negated(y):
    assert ccc(y, y) == pytest.approx(1.0, abs=1e-12)
    yc = y - y.mean()
    assert ccc(-yc, yc) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("offset", [0.1, 0.5, -0.3])
def test_offset_lowers_by_closed_form(y, offset):
    var = y.var()
    expected = 2 * var / (2 * var + offset**2)
    assert ccc(y + offset, y) == pytest.approx(expected, abs=1e-12)
    assert ccc(y + offset, y) < 1


@pytest.mark.parametrize("scale", [0.5, 2.0, 1.3])
def test_scale_lowers_by_closed_form(y, scale):
    var, mu = y.var(), y.mean()
    expected = 2 * scale * var / (var + scale**2 * var + (mu - scale * mu) ** 2)
    assert ccc(scale * y, y) == pytest.approx(expected, abs=1e-12)
    assert ccc(scale * y, y) < 1


def test_matches_reference_on_random_data():
    rng = np.random.default_rng(1)
    for _ in range(10):
        y = rng.uniform(-1, 1, 300)
        p = 0.6 * y + rng.normal(0.1, 0.3, 300)
        ref = _reference_ccc(p, y)
        assert ccc(p, y) == pytest.approx(ref, abs=1e-6)
        # the training loss computes the same rho_c (float32 on torch tensors)
        rho = 1 - losses.ccc_loss(torch.tensor(p), torch.tensor(y)).item()
        assert rho == pytest.approx(ref, abs=1e-6)
        rho32 = 1 - losses.ccc_loss(torch.tensor(p).float(), torch.tensor(y).float()).item()
        assert rho32 == pytest.approx(ref, abs=1e-5)


def test_torch_inputs_and_nan_and_mask():
    rng = np.random.default_rng(2)
    y = rng.uniform(-1, 1, (3, 40))
    p = y + rng.normal(0, 0.2, y.shape)
    ref = ccc(p, y)
    assert ccc(torch.tensor(p), torch.tensor(y)) == pytest.approx(ref, abs=1e-12)
    assert ccc(torch.tensor(p).float(), torch.tensor(y).float()) == pytest.approx(ref, abs=1e-6)
    # NaN frames (in target or prediction) are ignored
    p_nan, y_nan = p.copy(), y.copy()
    p_nan[0, :5] = np.nan
    y_nan[1, -3:] = np.nan
    keep = np.isfinite(p_nan) & np.isfinite(y_nan)
    assert ccc(p_nan, y_nan) == pytest.approx(_reference_ccc(p[keep], y[keep]), abs=1e-12)
    # a mask does the same
    mask = np.ones_like(y, dtype=bool)
    mask[2, 10:] = False
    assert ccc(p, y, mask) == pytest.approx(_reference_ccc(p[mask], y[mask]), abs=1e-12)
    assert ccc(p, y, torch.tensor(mask)) == pytest.approx(ccc(p, y, mask), abs=1e-12)


def test_pearson_rmse():
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, 200)
    p = 0.5 * y + 0.2 + rng.normal(0, 0.1, 200)
    assert pearson(p, y) == pytest.approx(np.corrcoef(p, y)[0, 1], abs=1e-12)
    assert rmse(p, y) == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), abs=1e-12)
    assert pearson(2 * y + 1, y) == pytest.approx(1.0)  # scale/offset blind, unlike CCC
    assert rmse(y, y) == 0.0


def test_concat_vs_per_sequence():
    rng = np.random.default_rng(4)
    ys = [rng.uniform(-1, 1, n) for n in (50, 80, 30)]
    # each sequence predicted with its own offset: per-sequence CCC and concatenated differ
    ps = [y + off for y, off in zip(ys, (0.0, 0.3, -0.2))]
    concat = ccc_concat(ps, ys)
    assert concat == pytest.approx(ccc(np.concatenate(ps), np.concatenate(ys)), abs=1e-12)
    per_seq = ccc_mean_per_sequence(ps, ys)
    assert per_seq == pytest.approx(np.mean([ccc(p, y) for p, y in zip(ps, ys)]), abs=1e-12)
    assert concat != pytest.approx(per_seq)
    res = evaluate_sequences(ps, [torch.tensor(y) for y in ys])
    assert res["ccc"] == pytest.approx(concat, abs=1e-12)
    assert res["ccc_seq_mean"] == pytest.approx(per_seq, abs=1e-12)
    assert res["frames"] == 160 and res["sequences"] == 3
    assert set(res) == {"ccc", "ccc_seq_mean", "pearson", "rmse", "frames", "sequences"}


def test_degenerate_cases_are_nan():
    assert np.isnan(ccc(np.array([np.nan, np.nan]), np.array([0.1, 0.2])))
    assert np.isnan(ccc(np.zeros(5), np.zeros(5)))  # zero variance and equal means: undefined
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    # an undefined sequence is skipped by the per-sequence mean
    ys = [np.zeros(5), np.linspace(-1, 1, 5)]
    assert ccc_mean_per_sequence(ys, ys) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ccc(np.zeros(3), np.zeros(4))
