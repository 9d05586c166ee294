"""Losses: CCC, MSE, CE over bins, nCCE, the composite of every shipped paper config, and a
tiny network overfitting a tiny batch (the losses really train)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schemas.config import load_config
from schemas.model import LossConfig, TargetLoss
from training import losses
from training.metrics import ccc as ccc_metric

PAPER = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "paper"
PAPER_CONFIGS = sorted(PAPER.glob("*.yaml"))
BINS = 20


def _outputs(b: int = 3, t: int = 30, bins: int = BINS, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "arousal": torch.rand(b, t, generator=g) * 2 - 1,
        "valence": torch.rand(b, t, generator=g) * 2 - 1,
        "arousal_logits": torch.randn(b, t, bins, generator=g),
        "valence_logits": torch.randn(b, t, bins, generator=g),
    }


def _targets(b: int = 3, t: int = 30, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "arousal": torch.rand(b, t, generator=g) * 2 - 1,
        "valence": torch.rand(b, t, generator=g) * 2 - 1,
    }


# --- binning ---------------------------------------------------------------------------------


def test_uniform_bins():
    c = losses.uniform_bin_centres(BINS)
    assert c.shape == (BINS,)
    assert c[0].item() == pytest.approx(-0.95) and c[-1].item() == pytest.approx(0.95)
    edges = losses.uniform_bin_edges(BINS)
    assert torch.allclose(losses.inner_edges(c), edges[1:-1], atol=1e-6)
    v = torch.tensor([-1.0, -0.96, -0.89, 0.01, 0.99, 1.0, 1.5, -2.0])
    assert losses.bin_index(v, c).tolist() == [0, 0, 1, 10, 19, 19, 19, 0]


def test_kmeans_bin_centres_deterministic_and_sorted():
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.normal(-0.5, 0.05, 500), rng.normal(0.4, 0.05, 500)])
    labels_nan = np.concatenate([labels, [np.nan, np.nan]])
    c1 = losses.kmeans_bin_centres(labels_nan, 4)
    c2 = losses.kmeans_bin_centres(labels_nan[::-1], 4)
    assert np.array_equal(c1, c2)
    assert c1.dtype == np.float32 and np.all(np.diff(c1) > 0)
    assert np.sum(np.abs(c1 + 0.5) < 0.15) == 2 and np.sum(np.abs(c1 - 0.4) < 0.15) == 2
    # 2 clusters on 2 tight modes land on them
    c = losses.kmeans_bin_centres(labels, 2)
    assert c == pytest.approx([-0.5, 0.4], abs=0.02)
    with pytest.raises(ValueError):
        losses.kmeans_bin_centres(np.array([0.1, np.nan]), 3)


# --- single terms ----------------------------------------------------------------------------


def test_ccc_and_mse_losses_with_mask_and_nan():
    out, tgt = _outputs(), _targets()
    p, y = out["arousal"], tgt["arousal"]
    assert losses.ccc_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.ccc_loss(p, y).item() == pytest.approx(1 - ccc_metric(p, y), abs=1e-6)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[1, 10:] = False
    y_nan = y.clone()
    y_nan[2, :4] = float("nan")
    keep = mask & torch.isfinite(y_nan)
    assert losses.ccc_loss(p, y_nan, mask).item() == pytest.approx(
        1 - ccc_metric(p[keep], y[keep]), abs=1e-6
    )
    assert losses.mse_loss(p, y_nan, mask).item() == pytest.approx(
        ((p[keep] - y[keep]) ** 2).mean().item(), abs=1e-7
    )


def test_ce_is_cross_entropy_on_logits():
    out, tgt = _outputs(), _targets()
    c = losses.uniform_bin_centres(BINS)
    idx = losses.bin_index(tgt["arousal"], c)
    ref = F.cross_entropy(out["arousal_logits"].reshape(-1, BINS), idx.reshape(-1))
    got = losses.ce_loss(out["arousal_logits"], tgt["arousal"], c)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def _peaked_logits(centre_bin: int, bins: int = BINS) -> torch.Tensor:
    """Symmetric around `centre_bin`: its expected bin centre is the bin's own centre."""
    logits = torch.full((bins,), -1e4)
    logits[centre_bin] = 2.0
    logits[centre_bin - 1] = logits[centre_bin + 1] = 1.0
    return logits


def test_ncce_equals_ce_when_expectation_is_true_centre():
    c = losses.uniform_bin_centres(BINS)
    logits = _peaked_logits(7)[None]
    target = c[7:8]
    assert losses.expected_value(logits, c).item() == pytest.approx(c[7].item(), abs=1e-6)
    ce = losses.ce_loss(logits, target, c)
    ncce = losses.ncce_loss(logits, target, c)
    assert ncce.item() == pytest.approx(ce.item(), rel=1e-6)


def test_ncce_grows_with_distance():
    c = losses.uniform_bin_centres(BINS)
    logits = -0.5 * (torch.arange(BINS) - 10.0) ** 2 / 4  # peaked at bin 10
    prev_ncce, prev_weight = -math.inf, 0.0
    for true_bin in (10, 12, 15, 19):
        target = c[true_bin : true_bin + 1]
        ncce = losses.ncce_loss(logits[None], target, c).item()
        ce = losses.ce_loss(logits[None], target, c).item()
        weight = ncce / ce  # C_norm = 1 + |K_true - E_P[K]|
        expected_w = 1 + abs(c[true_bin].item() - losses.expected_value(logits, c).item())
        assert weight == pytest.approx(expected_w, rel=1e-5)
        assert ncce > prev_ncce and weight > prev_weight
        prev_ncce, prev_weight = ncce, weight


def test_ncce_gradients_finite_and_weight_detached():
    c = losses.uniform_bin_centres(BINS)
    logits = (torch.randn(4, 25, BINS) * 5).requires_grad_()
    target = torch.rand(4, 25) * 2 - 1
    losses.ncce_loss(logits, target, c).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # one frame: grad of nCCE = C_norm * grad of CE (C_norm is a constant weight)
    one = torch.randn(1, BINS, requires_grad=True)
    y = torch.tensor([0.63])
    (g_ncce,) = torch.autograd.grad(losses.ncce_loss(one, y, c), one)
    (g_ce,) = torch.autograd.grad(losses.ce_loss(one, y, c), one)
    c_norm = 1 + abs(c[losses.bin_index(y, c)].item() - losses.expected_value(one, c).item())
    assert torch.allclose(g_ncce, c_norm * g_ce, atol=1e-6)


# --- composite -------------------------------------------------------------------------------


def test_eight_paper_configs_shipped():
    assert len(PAPER_CONFIGS) == 8
    rows = {
        (cfg.arousal.model_dump_json(), cfg.valence.model_dump_json())
        for cfg in (load_config(p).loss for p in PAPER_CONFIGS)
    }
    assert len(rows) == 8  # all distinct
    assert load_config(PAPER / "04_ccc_ce_mse.yaml").loss == LossConfig()  # the public default


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_composite_equals_weighted_sum_of_parts(path):
    cfg = load_config(path).loss
    out, tgt = _outputs(), _targets()
    centres = torch.stack(
        [losses.uniform_bin_centres(BINS), torch.linspace(-0.9, 0.9, BINS)]
    )  # per-target centres
    total, parts = losses.composite_loss(out, tgt, cfg, centres)
    expected = 0.0
    for i, name in enumerate(("arousal", "valence")):
        w = getattr(cfg, name)
        p, lg, y = out[name], out[f"{name}_logits"], tgt[name]
        terms = {
            "ccc": (w.w_ccc, 1 - ccc_metric(p, y)),
            "mse": (w.w_mse, ((p - y) ** 2).mean().item()),
            "ce": (w.w_ce, losses.ce_loss(lg, y, centres[i]).item()),
            "ncce": (w.w_ncce, losses.ncce_loss(lg, y, centres[i]).item()),
        }
        target_sum = 0.0
        for term, (weight, value) in terms.items():
            key = f"{name}/{term}"
            if weight:
                assert parts[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6)
                target_sum += weight * value
            else:
                assert key not in parts
        assert parts[name].item() == pytest.approx(target_sum, rel=1e-5)
        expected += target_sum
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_composite_l2_mask_and_output_mask():
    cfg = LossConfig(l2=0.01)
    out, tgt = _outputs(), _targets()
    params = [torch.ones(3, requires_grad=True), torch.ones(2)]  # 2nd is frozen: not counted
    c = losses.uniform_bin_centres(BINS)
    total, parts = losses.composite_loss(out, tgt, cfg, c, params=params)
    base, _ = losses.composite_loss(out, tgt, LossConfig(), c)
    assert parts["l2"].item() == 3.0
    assert total.item() == pytest.approx(base.item() + 0.03, rel=1e-6)
    with pytest.raises(ValueError, match="parameters"):
        losses.composite_loss(out, tgt, cfg, c)
    # masked frames do not count, whatever their targets
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[0, 20:] = False
    tgt2 = {k: v.clone() for k, v in tgt.items()}
    tgt2["arousal"][0, 20:] = 5.0
    a, _ = losses.composite_loss(out, tgt, LossConfig(), c, mask=mask)
    b, _ = losses.composite_loss(out, tgt2, LossConfig(), c, mask=mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    with pytest.raises(ValueError):
        TargetLoss(w_ccc=0, w_mse=0, w_ce=0, w_ncce=0)


# --- the losses train a network --------------------------------------------------------------


def test_tiny_model_overfits_tiny_batch():
    from pipeline.model import build_model

    torch.manual_seed(0)
    model = build_model("ssvaerr_tiny")
    b, t = 4, 16
    x = torch.randint(0, 256, (b, t, 96, 96), dtype=torch.uint8)
    time = torch.linspace(0, 2 * math.pi, t)
    phase = torch.arange(b, dtype=torch.float32)[:, None]
    tgt = {"arousal": 0.8 * torch.sin(time + phase), "valence": 0.7 * torch.cos(2 * time + phase)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    cfg = LossConfig()
    best = (-1.0, -1.0)
    for _step in range(300):
        out = model(x)
        loss, _ = losses.composite_loss(out, tgt, cfg, model.bin_centres)
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = (ccc_metric(out.arousal, tgt["arousal"]), ccc_metric(out.valence, tgt["valence"]))
        if min(best) > 0.97:
            break
    # measured in train mode (batch statistics): a few dozen steps are too few for the BN
    # running averages that eval mode would use
    assert min(best) > 0.95, best
