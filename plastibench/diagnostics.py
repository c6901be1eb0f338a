"""Plasticity diagnostics after the reference's rank definitions (``lop/utils/miscellaneous.py``).

The ranks follow the reference's ``compute_effective_rank`` / ``compute_abs_approximate_rank``
(including the all-zero edge case below); the probe, dead-unit rule and weight magnitude are
plastibench's per-task choices, each described here and in the task's docstring, not the
reference's code for every stream. :func:`measure` is the default of ``Task.diagnostics``.

For each hidden layer's representation ``H[s]`` (probe inputs × units), per seed:

* ``dead_fraction``: fraction of units whose activation is exactly 0 on every probe input
  (``lop/permuted_mnist/online_expr.py``);
* ``effective_rank``: exp of the entropy of σ/Σσ, σ the singular values (Roy & Vetterli 2007);
* ``stable_rank``: the paper's "99% stable rank", the smallest k with Σ_{i≤k} σ_i ≥ 0.99 Σσ
  (σ not squared, as ``compute_abs_approximate_rank``);

and ``weight_magnitude``: mean |w| over all weight matrices, biases excluded (the MNIST plots'
Σ|W| / #weights).

Edge case, as the reference: a layer whose representation is all zero (all σ = 0) has both ranks
**1**, not 0. In the reference σ/Σσ is 0/0 = NaN; ``compute_effective_rank`` skips every ``p > 0``
(false on NaN), so the entropy is 0 and the rank e⁰ = 1; ``compute_abs_approximate_rank`` adds one
NaN to its running sum, counts k = 1, and stops because ``NaN < prop`` is false. We return the same
1 for both. (A diverged seed's features are zeroed before the SVD, so it also gets 1 here; the
engine then overwrites that seed's diagnostics with NaN.)

A conv layer's units are its channels: a channel is dead when it is 0 at every position of every
probe input, and the ranks are those of the channel activations averaged over positions
(``[P, C]``, as the per-channel utilities of ConvGnT average them). The probe runs in eval mode
(BatchNorm uses running statistics and is not updated, dropout is off) under ``no_grad``.

A task may measure otherwise: ``icifar100`` follows its reference's analysis
(``lop/incremental_cifar/post_run_analysis.py``, issue 11) with :func:`batch_statistics`,
:func:`dormant_fraction` and :func:`parameter_magnitude`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from .vision import BatchedBatchNorm2d


def effective_rank(sv: torch.Tensor) -> torch.Tensor:
    """``sv[..., k]`` singular values -> effective rank ``[...]`` (0·log 0 taken as 0; all-zero σ -> 1)."""
    total = sv.sum(-1, keepdim=True)
    p = sv / torch.where(total > 0, total, torch.ones_like(total))  # all-zero: p = 0, entropy 0, rank 1
    entropy = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    return torch.exp(entropy)


def stable_rank(sv: torch.Tensor, prop: float = 0.99) -> torch.Tensor:
    """Smallest k whose k largest singular values hold ``prop`` of their sum, ``[...]`` (all-zero σ -> 1)."""
    sv = torch.sort(sv, dim=-1, descending=True).values
    total = sv.sum(-1, keepdim=True)
    cum = torch.cumsum(sv, -1) / torch.where(total > 0, total, torch.ones_like(total))
    rank = (cum < prop).sum(-1) + 1
    # all-zero σ: cum is 0 everywhere, so (cum < prop) counts k and the clamp would give k; the
    # reference stops after its first (NaN) term, so the rank is 1
    return torch.where(total.squeeze(-1) > 0, rank.clamp(max=sv.shape[-1]), torch.ones_like(rank)).float()


@torch.no_grad()
def measure(net: torch.nn.Module, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """All diagnostics on ``probe[S, P, ...]``: name -> per-seed values ``[S]``."""
    was_training = net.training
    net.eval()
    try:
        _, features = net(probe)
    finally:
        net.train(was_training)
    out: dict[str, torch.Tensor] = {}
    for i, h in enumerate(features):
        h = torch.nan_to_num(h.float(), nan=0.0, posinf=0.0, neginf=0.0)  # a diverged seed's: see divergence
        if h.dim() > 3:  # conv map [S, P, C, H, W]: channels are the units
            dead = h.abs().sum((1, 3, 4)) == 0
            h = h.mean((3, 4))
        else:
            dead = h.abs().sum(1) == 0
        sv = torch.linalg.svdvals(h)
        out[f"dead_fraction/layer{i}"] = dead.float().mean(1)
        out[f"effective_rank/layer{i}"] = effective_rank(sv)
        out[f"stable_rank/layer{i}"] = stable_rank(sv)
    weights = net.weight_tensors()
    total = sum(torch.nan_to_num(w.detach().abs(), nan=0.0, posinf=0.0).flatten(1).sum(1) for w in weights)
    out["weight_magnitude"] = total / sum(w[0].numel() for w in weights)
    return out


@contextmanager
def batch_statistics(net: torch.nn.Module) -> Iterator[None]:
    """Within: every BatchNorm of ``net`` normalises by the batch's statistics (train mode), all else
    is in eval mode (no dropout); afterwards the modes and every buffer (BN running statistics) are
    as they were, so a forward pass here leaves the trained network unchanged."""
    was_training = net.training
    saved = [b.clone() for b in net.buffers()]
    net.eval()
    for m in net.modules():
        if isinstance(m, BatchedBatchNorm2d):
            m.train()
    try:
        yield
    finally:
        net.train(was_training)
        with torch.no_grad():
            for b, old in zip(net.buffers(), saved):
                b.copy_(old)


def dormant_fraction(features: Sequence[torch.Tensor], below: float) -> torch.Tensor:
    """Per seed ``[S]``: the fraction of the units of all ``features`` (pooled over layers) that are
    non-zero on fewer than ``below`` of the inputs, a conv map's channel over inputs and positions
    (``post_run_analysis.py::compute_dormant_units_proportion``: Σ dormant / Σ units).
    ``features[i]`` is ``[S, P, C]`` or ``[S, P, C, H, W]``."""
    dormant, units = 0, 0
    for h in features:
        active = (h != 0).float().mean((1, 3, 4) if h.dim() > 3 else 1)  # [S, C]
        dormant = dormant + (active < below).sum(1)
        units += h.shape[2]
    return dormant.double() / units


def parameter_magnitude(net: torch.nn.Module) -> torch.Tensor:
    """Per seed ``[S]``: mean |θ| over every parameter of the seed-batched ``net``, biases and BN
    included (``post_run_analysis.py::compute_average_weight_magnitude``)."""
    params = [p.detach() for p in net.parameters()]
    total = sum(torch.nan_to_num(p.abs(), nan=0.0, posinf=0.0).flatten(1).sum(1) for p in params)
    return total / sum(p[0].numel() for p in params)
