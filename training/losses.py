"""Training losses of SS-VAERR (METHOD.md, "Losses"): CCC, MSE, CE over bins, the cost-sensitive
nCCE, and the composite per-target weighted sum. All are plain functions of tensors.

Shapes: predictions and targets are any matching shape (typically [B, T]); logits add a last
`bins` axis. `mask` (bool, same shape as the targets) marks valid frames; non-finite targets
are excluded as well. Reductions are means over valid frames of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.model.network import uniform_bin_centres
from schemas.model import LossConfig, TargetLoss

__all__ = [
    "TARGETS",
    "all_sum_autograd",
    "bin_index",
    "ccc",
    "ccc_loss",
    "ce_loss",
    "composite_loss",
    "expected_value",
    "inner_edges",
    "kmeans_bin_centres",
    "l2_penalty",
    "mse_loss",
    "ncce_loss",
    "target_loss",
    "uniform_bin_centres",
    "uniform_bin_edges",
]

TARGETS = ("arousal", "valence")


def _valid(target: Tensor, mask: Tensor | None) -> Tensor:
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & mask.to(device=target.device, dtype=torch.bool)
    return valid


def ccc(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Concordance correlation rho_c over all valid elements flattened (population moments).

    rho_c = 2 cov(y, p) / (var(y) + var(p) + (mean(y) - mean(p))^2); computed in float32+.
    """
    valid = _valid(target, mask)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    p = pred[valid].to(dtype)
    y = target[valid].to(dtype)
    if p.numel() == 0:
        raise ValueError("ccc: no valid frames")
    mp, my = p.mean(), y.mean()
    dp, dy = p - mp, y - my
    cov = (dp * dy).mean()
    denom = (dp * dp).mean() + (dy * dy).mean() + (mp - my) ** 2
    return 2 * cov / denom.clamp_min(torch.finfo(dtype).tiny)


AllSum = Callable[[Tensor], Tensor]


def ccc_global(pred: Tensor, target: Tensor, mask: Tensor | None, all_sum: AllSum) -> Tensor:
    """rho_c of the GLOBAL batch under data parallelism: each worker's moment sums
    (n, sum p, sum y, sum p^2, sum y^2, sum p*y; float64) are summed over workers by
    `all_sum` (autograd-aware: `all_sum_autograd`), then
    rho_c is formed from the pooled moments: the value every worker gets is the CCC of all
    workers' frames together, as if the global batch ran on one device. With DDP's gradient
    averaging, the gradient is exactly that of the global-batch CCC (all_reduce's backward
    sums the identical upstream gradients, W times; DDP divides by W).

    A worker without valid frames contributes zero sums (it still joins the collective).
    """
    valid = _valid(target, mask)
    p = pred[valid].to(torch.float64)
    y = target[valid].to(torch.float64)
    n = p.new_tensor(float(p.numel()))
    sums = all_sum(torch.stack([n, p.sum(), y.sum(), (p * p).sum(), (y * y).sum(), (p * y).sum()]))
    n, sp, sy, spp, syy, spy = sums.unbind()
    if float(n.detach()) == 0:  # no valid frame on any worker: a zero CCC without gradient
        return (sums * 0).sum().float()
    mp, my = sp / n, sy / n
    cov = spy / n - mp * my
    denom = (spp / n - mp * mp) + (syy / n - my * my) + (mp - my) ** 2
    return (2 * cov / denom.clamp_min(torch.finfo(torch.float64).tiny)).float()


def all_sum_autograd(t: Tensor) -> Tensor:
    """`t` summed over every rank of the default process group, on t's own device (NCCL
    takes only CUDA tensors), autograd-aware: backward sums the upstream gradients the same
    way. The functional collective (torch.distributed._functional_collectives), which
    replaces the deprecated torch.distributed.nn.functional.all_reduce; its op is called
    directly (importing the module registers the op's backward): funcol.all_reduce would
    first import torch._dynamo to check for tracing, seconds per worker for nothing."""
    from torch.distributed import _functional_collectives as funcol

    group = torch.distributed.group.WORLD.group_name
    return funcol.wait_tensor(torch.ops._c10d_functional.all_reduce(t, "sum", group))


def ccc_loss(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, all_sum: AllSum | None = None
) -> Tensor:
    """1 - rho_c over the whole batch flattened; scalar in [0, 2]. With `all_sum` (data
    parallel training), over the global batch of all workers (`ccc_global`)."""
    if all_sum is not None:
        return 1 - ccc_global(pred, target, mask, all_sum)
    return 1 - ccc(pred, target, mask)


def mse_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of the regression value over valid frames; scalar."""
    valid = _valid(target, mask)
    diff = pred[valid].float() - target[valid].float()
    return (diff * diff).mean()


def uniform_bin_edges(bins: int, low: float = -1.0, high: float = 1.0) -> Tensor:
    """The bins + 1 edges of equal-width bins over [low, high] -> float32 [bins + 1]."""
    return torch.linspace(low, high, bins + 1, dtype=torch.float64).float()


def inner_edges(centres: Tensor) -> Tensor:
    """Boundaries between neighbouring bins: midpoints of sorted centres [bins] -> [bins - 1].

    For uniform centres these are exactly the inner uniform edges; for k-means centres each
    value falls in the bin of its nearest centre.
    """
    c = torch.as_tensor(centres)
    return (c[1:] + c[:-1]) / 2


def bin_index(values: Tensor, centres: Tensor) -> Tensor:
    """Bin of each value (nearest centre; values outside the range clamp to the end bins).

    values [...] float, centres [bins] ascending -> long [...] in [0, bins).
    """
    edges = inner_edges(centres.to(values.device, torch.float32))
    return torch.bucketize(values.float().contiguous(), edges)


def kmeans_bin_centres(labels: np.ndarray, bins: int, iters: int = 100) -> np.ndarray:
    """Deterministic 1-D k-means (Lloyd, quantile initialisation) of training labels.

    labels: any shape, NaN ignored -> sorted float32 centres [bins]. An empty cluster is
    re-seeded at the quantile it started from.
    """
    x = np.asarray(labels, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x)])
    if x.size < bins:
        raise ValueError(f"kmeans_bin_centres: {x.size} finite labels for {bins} bins")
    init = np.quantile(x, (np.arange(bins) + 0.5) / bins)
    c = init.copy()
    for _ in range(iters):
        c = np.sort(c)
        assign = np.searchsorted((c[1:] + c[:-1]) / 2, x)
        sums = np.bincount(assign, weights=x, minlength=bins)
        counts = np.bincount(assign, minlength=bins)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), init)
        if np.allclose(new, c, rtol=0, atol=1e-10):
            c = new
            break
        c = new
    return np.sort(c).astype(np.float32)


def ce_loss(logits: Tensor, target: Tensor, centres: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of the bin logits [..., bins] against the bin of each target value [...].

    One softmax only (applied inside cross_entropy to the raw logits); mean over valid frames.
    """
    valid = _valid(target, mask)
    idx = bin_index(target[valid], centres)
    return F.cross_entropy(logits[valid].float(), idx)


def expected_value(logits: Tensor, centres: Tensor) -> Tensor:
    """Expected bin centre under softmax(logits): [..., bins] -> [...]."""
    return (logits.float().softmax(-1) * centres.to(logits.device, torch.float32)).sum(-1)


def ncce_loss(
    logits: Tensor, target: Tensor, centres: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Cost-sensitive CE (Le, Aldeneh, Mower Provost 2017): mean of C_norm * CE per frame.

    C_norm = 1 + |sum_l K_l (Y_l - P_l)| = 1 + |K_true - E_P[K]|, with K the bin centres,
    Y the one-hot true bin and P the predicted distribution; detached (a per-frame weight).
    """
    valid = _valid(target, mask)
    lg = logits[valid].float()
    c = centres.to(lg.device, torch.float32)
    idx = bin_index(target[valid], c)
    ce = F.cross_entropy(lg, idx, reduction="none")
    c_norm = 1 + (c[idx] - expected_value(lg, c)).abs()
    return (c_norm.detach() * ce).mean()


def l2_penalty(params: Iterable[Tensor]) -> Tensor:
    """Sum of squares of the trainable parameters (requires_grad)."""
    terms = [p.float().pow(2).sum() for p in params if p.requires_grad]
    if not terms:
        raise ValueError("l2_penalty: no trainable parameters")
    return torch.stack(terms).sum()


def _output_field(outputs: object, name: str) -> Tensor:
    if isinstance(outputs, Mapping):
        return outputs[name]
    return getattr(outputs, name)


def target_loss(
    pred: Tensor,
    logits: Tensor,
    target: Tensor,
    centres: Tensor,
    weights: TargetLoss,
    mask: Tensor | None = None,
    all_sum: AllSum | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One target's w_ccc*CCC + w_mse*MSE + w_ce*CE + w_ncce*nCCE; zero-weight terms skipped.
    `all_sum`: the CCC term over the global batch of all workers (see ccc_global).

    Returns (weighted sum, {term name: unweighted value}).
    """
    parts: dict[str, Tensor] = {}
    total = pred.new_zeros((), dtype=torch.float32)
    if weights.w_ccc:
        parts["ccc"] = ccc_loss(pred, target, mask, all_sum)
        total = total + weights.w_ccc * parts["ccc"]
    if weights.w_mse:
        parts["mse"] = mse_loss(pred, target, mask)
        total = total + weights.w_mse * parts["mse"]
    if weights.w_ce:
        parts["ce"] = ce_loss(logits, target, centres, mask)
        total = total + weights.w_ce * parts["ce"]
    if weights.w_ncce:
        parts["ncce"] = ncce_loss(logits, target, centres, mask)
        total = total + weights.w_ncce * parts["ncce"]
    return total, parts


def composite_loss(
    outputs: object,
    targets: Mapping[str, Tensor],
    cfg: LossConfig,
    bin_centres: Tensor,
    mask: Tensor | None = None,
    params: Iterable[Tensor] | None = None,
    all_sum: AllSum | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The composite loss of METHOD.md summed over arousal and valence, plus optional L2.

    outputs: SSVAERROutput or a mapping with `arousal`, `valence` [B, T] and
    `arousal_logits`, `valence_logits` [B, T, bins]; targets: {"arousal", "valence"} [B, T]
    (NaN = unlabelled); bin_centres [2, bins] (arousal, valence) or [bins]; mask [B, T] bool
    (default: the outputs' own mask when they carry one); params: required when cfg.l2 > 0;
    all_sum: data-parallel training's autograd all-reduce, so CCC terms use the global batch.
    Returns (total, parts) with unweighted parts keyed "arousal/ccc", ..., "l2", and the
    per-target weighted sums keyed "arousal", "valence".
    """
    if mask is None and not isinstance(outputs, Mapping):
        mask = getattr(outputs, "mask", None)
    centres = torch.as_tensor(bin_centres)
    if centres.dim() == 1:
        centres = centres.expand(2, -1)
    parts: dict[str, Tensor] = {}
    total: Tensor | None = None
    for i, name in enumerate(TARGETS):
        t_total, t_parts = target_loss(
            _output_field(outputs, name),
            _output_field(outputs, f"{name}_logits"),
            targets[name],
            centres[i],
            getattr(cfg, name),
            mask,
            all_sum,
        )
        parts[name] = t_total
        parts.update({f"{name}/{k}": v for k, v in t_parts.items()})
        total = t_total if total is None else total + t_total
    assert total is not None
    if cfg.l2:
        if params is None:
            raise ValueError("composite_loss: cfg.l2 > 0 needs the model's parameters")
        parts["l2"] = l2_penalty(params)
        total = total + cfg.l2 * parts["l2"]
    return total, parts
