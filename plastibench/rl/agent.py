"""The PPO agent's networks as one seed-batched module, so that every method applies unchanged.

Restated from ``lop/nets/policies.py`` (``MLPPolicy``) and ``lop/nets/valuefs.py`` (``MLPVF``) with
``init='lecun'`` (``lop/rl/run_ppo.py``'s default): the policy is an MLP obs→h→…→a giving the mean
of a Normal whose log-std is a state-independent parameter ``gaussian.log_std[S, a]`` initialised 0; the
value is an MLP obs→h→…→1; ReLU; every weight U(±√(3/fan_in)) (``lecun_init``), biases 0. Both are
:class:`plastibench.nn.BatchedMLP` with ``init="lecun"``, drawn from keys of their own.

``forward(obs[S, B, o])`` returns ``out[S, B, 2a+1]`` = (mean, log_std broadcast, value) and the
features: the policy's hidden activations, then the value net's. ``unit_groups()`` lists the hidden
layers in the same order (``policy/layer0``, …, ``value/layer0``, …), so a unit-level method (CBP,
ReDo) treats the policy and value nets as the reference's two GnT objects do: each layer on its own,
on the mini-batch's activations of that update.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..nn import BatchedMLP, MLPSpec
from ..units import InitRule, UnitGroup


def split(out: torch.Tensor, act_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`ActorCritic`'s ``out[..., 2a+1]`` -> mean ``[..., a]``, log_std ``[..., a]``, value ``[...]``."""
    return out[..., :act_dim], out[..., act_dim:2 * act_dim], out[..., 2 * act_dim]


class LogStd(nn.Module):
    """The policy's state-independent ``log_std[S, a]``, initialised 0. A module of its own, between the
    policy and the value net, so that parameters come in layer order (the value head last)."""

    def __init__(self, n_seeds: int, act_dim: int, device=None):
        super().__init__()
        self.log_std = nn.Parameter(torch.zeros(n_seeds, act_dim, device=device))


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], seeds: torch.Tensor):
        super().__init__()
        self.act_dim = act_dim
        self.policy = BatchedMLP(MLPSpec((obs_dim, *hidden, act_dim), "relu", "lecun"), seeds)
        self.gaussian = LogStd(seeds.numel(), act_dim, seeds.device)
        self.value = BatchedMLP(MLPSpec((obs_dim, *hidden, 1), "relu", "lecun"), seeds, key="init/value")
        self._n_policy = len(hidden)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mean, policy_features = self.policy(obs)
        value, value_features = self.value(obs)
        log_std = self.gaussian.log_std.unsqueeze(1).expand_as(mean)
        return torch.cat([mean, log_std, value], -1), policy_features + value_features

    def unit_groups(self) -> list[UnitGroup]:
        return [replace(g, name=f"{part}/{g.name}")
                for part, net in (("policy", self.policy), ("value", self.value)) for g in net.unit_groups()]

    def unit_init(self, group: UnitGroup) -> InitRule:
        return self.policy.unit_init(group)  # both nets: U(±√(3/fan_in)) by the group's own fan-in

    def weight_tensors(self) -> list[torch.Tensor]:
        return self.policy.weight_tensors() + self.value.weight_tensors()

    # HiddenSites of both nets, numbered as unit_groups(): the policy's sites, then the value net's
    def set_site_observer(self, fn) -> None:
        self.policy.set_site_observer(fn)
        n = self._n_policy
        self.value.set_site_observer(None if fn is None else lambda i, h: fn(n + i, h))

    def set_post_activation(self, fn) -> None:
        self.policy.set_post_activation(fn)
        n = self._n_policy
        self.value.set_post_activation(None if fn is None else lambda i, h: fn(n + i, h))

    def set_pre_norms(self, norms) -> None:
        n = self._n_policy
        self.policy.set_pre_norms(None if norms is None else norms[:n])
        self.value.set_pre_norms(None if norms is None else norms[n:])
