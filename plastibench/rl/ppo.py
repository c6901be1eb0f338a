"""PPO's pure parts, seed-batched: Gaussian log-likelihood, GAE, advantage standardisation, the loss.

Restated from ``shibhansh/loss-of-plasticity`` ``lop/algos/rl/ppo.py`` (``get_rets_advs``, ``learn``)
and ``lop/nets/policies.py`` (``MLPPolicy``). Every tensor has a leading seed axis ``[S, ...]``; a
rollout is ``[S, T, E]`` (T steps of E environments per seed). Per seed, per environment:

    δ_t  = r_t + γ·V'_t − V(o_t)          V'_t = V(o_{t+1}), or 0 where the episode ended at t
                                          (or V(final o) at a time-limit end with bootstrapping)
    A_t  = δ_t + γ·λ·c_t·A_{t+1}          c_t = 0 where an episode ended at t, else 1; A_T = 0
    R_t  = A_t + V(o_t)                   the value target (unstandardised A)
    Â    = (A − mean A) / std A           over the whole rollout of the seed (all T·E samples),
                                          std with Bessel's correction (torch's); left unscaled where
                                          std is 0 or NaN, as the reference
    loss = mean_b max(−ρ_b·Â_b, −clip(ρ_b, 1−ε, 1+ε)·Â_b) + mean_b (R_b − V(o_b))²

with ρ_b = exp(log π(a_b|o_b) − log π_old(a_b|o_b)), log π the sum over action dimensions of the
Normal(μ(o), exp(log σ)) log-density. The value term has coefficient 1 and no ½ ("no value loss
weight applied"); no entropy bonus.
"""

from __future__ import annotations

import math

import torch

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Σ_i log N(a_i; μ_i, σ_i²) over the last (action) axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - HALF_LOG_2PI).sum(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, continues: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets ``[S, T, E]`` from rewards, V(o_t), V'_t (already 0 at a terminal
    end) and c_t (0 where an episode ended at t), all ``[S, T, E]``."""
    deltas = rewards + gamma * next_values - values
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in range(deltas.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * continues[:, t] * running
        advantages[:, t] = running
    return advantages, advantages + values


def standardise(advantages: torch.Tensor) -> torch.Tensor:
    """Per seed over all of its samples: subtract the mean, divide by the std unless 0 or NaN."""
    flat = advantages.reshape(advantages.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    std = centred.std(1, keepdim=True)
    usable = (std != 0) & ~torch.isnan(std)
    return torch.where(usable, centred / torch.where(usable, std, torch.ones_like(std)), centred).view_as(advantages)


def ppo_loss(mean: torch.Tensor, log_std: torch.Tensor, value: torch.Tensor, actions: torch.Tensor,
             logp_old: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """Per-seed loss ``[S]`` of a mini-batch: mean ``[S, B, a]``, log_std broadcastable to it,
    value/logp_old/advantages/returns ``[S, B]``."""
    ratio = torch.exp(normal_log_prob(actions, mean, log_std) - logp_old)
    policy = torch.maximum(-ratio * advantages, -torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    return policy.mean(1) + (returns - value).pow(2).mean(1)
