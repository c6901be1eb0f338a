"""Plasticity diagnostics with the reference's definitions (``lop/utils/miscellaneous.py``).

For each hidden layer's representation ``H[s]`` (probe inputs × units), per seed:

* ``dead_fraction``: fraction of units whose activation is exactly 0 on every probe input
  (``lop/permuted_mnist/online_expr.py``);
* ``effective_rank``: exp of the entropy of σ/Σσ, σ the singular values (Roy & Vetterli 2007);
* ``stable_rank``: the paper's "99% stable rank", the smallest k with Σ_{i≤k} σ_i ≥ 0.99 Σσ
  (σ not squared, as ``compute_abs_approximate_rank``);

and ``weight_magnitude``: mean |w| over all weight matrices, biases excluded (the MNIST plots'
Σ|W| / #weights). A layer whose representation is all zero has both ranks 0.

A conv layer's units are its channels: a channel is dead when it is 0 at every position of every
probe input, and the ranks are those of the channel activations averaged over positions
(``[P, C]``, as the per-channel utilities of ConvGnT average them). The probe runs in eval mode
(BatchNorm uses running statistics and is not updated, dropout is off) under ``no_grad``.
"""

from __future__ import annotations

import torch


def effective_rank(sv: torch.Tensor) -> torch.Tensor:
    """``sv[..., k]`` singular values -> effective rank ``[...]`` (0·log 0 taken as 0)."""
    total = sv.sum(-1, keepdim=True)
    p = sv / torch.where(total > 0, total, torch.ones_like(total))
    entropy = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def stable_rank(sv: torch.Tensor, prop: float = 0.99) -> torch.Tensor:
    """Smallest k whose k largest singular values hold ``prop`` of their sum, ``[...]``."""
    sv = torch.sort(sv, dim=-1, descending=True).values
    total = sv.sum(-1, keepdim=True)
    cum = torch.cumsum(sv, -1) / torch.where(total > 0, total, torch.ones_like(total))
    rank = (cum < prop).sum(-1) + 1
    return torch.where(total.squeeze(-1) > 0, rank.clamp(max=sv.shape[-1]), torch.zeros_like(rank)).float()


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
