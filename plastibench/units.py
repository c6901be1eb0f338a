"""The unit-structure API: for each hidden unit, its incoming weights, outgoing weights, optimizer state.

Unit-level methods (CBP, ReDo, SNR, ...) never index network tensors by hand. A network exposes
``unit_groups()``; each :class:`UnitGroup` names the tensors a unit owns and offers batched reads
(per-unit weight magnitudes ``[S, n]``) and writes (re-initialise the units ``idx[S, K]`` where
``valid[S, K]``), all without host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .init import init_bound


@dataclass(frozen=True)
class UnitParam:
    """A tensor in which unit j owns the slice ``j*group : (j+1)*group`` along ``dim``.

    ``dim`` counts the leading seed axis (a linear weight ``[S, out, in]`` has its units on dim 1
    and the previous layer's units on dim 2). ``group > 1`` covers a flatten, where one conv
    channel feeds several inputs of the next linear layer.
    """

    param: torch.Tensor
    dim: int
    group: int = 1

    def _moved(self, t: torch.Tensor | None) -> torch.Tensor:
        return (self.param if t is None else t).movedim(self.dim, 1)

    def magnitude(self) -> torch.Tensor:
        """Mean absolute value of each unit's slice, ``[S, n]``."""
        return self.slot_magnitude().mean(-1)

    def slot_magnitude(self) -> torch.Tensor:
        """Mean absolute value over each of a unit's ``group`` positions, ``[S, n, group]``."""
        moved = self._moved(None).detach().abs()
        s, m = moved.shape[0], moved.shape[1] // self.group
        return moved.reshape(s, m * self.group, -1).mean(-1).view(s, m, self.group)

    def _index(self, idx: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        s, k = idx.shape
        if self.group > 1:
            idx = (idx.unsqueeze(-1) * self.group + torch.arange(self.group, device=idx.device)).reshape(s, -1)
        rest = moved.shape[2:]
        return idx.view(*idx.shape, *([1] * len(rest))).expand(*idx.shape, *rest)

    def gather(self, idx: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The slices of units ``idx[S, K]``: ``[S, K*group, *rest]``."""
        moved = self._moved(t)
        return moved.gather(1, self._index(idx, moved))

    @torch.no_grad()
    def assign(self, idx: torch.Tensor, valid: torch.Tensor, values: torch.Tensor | float,
               t: torch.Tensor | None = None) -> None:
        """Set the slices of units ``idx[S, K]`` to ``values`` where ``valid[S, K]``; others keep theirs.

        ``values`` is a number or a tensor with the slices' number of elements.
        """
        moved = self._moved(t)
        index = self._index(idx, moved)
        current = moved.gather(1, index)
        mask = valid.repeat_interleave(self.group, dim=1) if self.group > 1 else valid
        mask = mask.view(*mask.shape, *([1] * (current.dim() - 2)))
        if torch.is_tensor(values):
            values = values.reshape(current.shape)
        moved.scatter_(1, index, torch.where(mask, values, current))


@dataclass(frozen=True)
class UnitReset:
    """A per-unit tensor that re-initialisation sets to a constant ``value``.

    A unit followed by a BatchNorm owns that BN's weight (reset to 1), bias (0), running mean (0)
    and running variance (1), as ``lop/algos/res_gnt.py::ResGnT.gen_new_features`` resets them.
    """

    part: UnitParam
    value: float


@dataclass(frozen=True)
class UnitGroup:
    """The hidden units of one layer and every tensor each of them owns."""

    name: str
    n_units: int
    fan_in: int
    activation: str
    incoming_weight: UnitParam
    incoming_bias: UnitParam
    outgoing_weight: UnitParam
    outgoing_bias: torch.Tensor
    norm: tuple[UnitReset, ...] = field(default=())

    def incoming_magnitude(self) -> torch.Tensor:
        return self.incoming_weight.magnitude()

    def outgoing_magnitude(self) -> torch.Tensor:
        return self.outgoing_weight.magnitude()

    def owned(self) -> tuple[UnitParam, ...]:
        return (self.incoming_weight, self.incoming_bias, self.outgoing_weight,
                *(reset.part for reset in self.norm))

    @torch.no_grad()
    def reinitialise(self, idx: torch.Tensor, valid: torch.Tensor, new_incoming: torch.Tensor) -> None:
        """Units ``idx`` (where ``valid``) get incoming weights ``new_incoming[S, K, ...]``,
        bias 0 and outgoing weights 0, so the network's function is unchanged at that moment;
        the ``norm`` tensors get their reset values."""
        self.incoming_weight.assign(idx, valid, new_incoming)
        self.incoming_bias.assign(idx, valid, 0.0)
        self.outgoing_weight.assign(idx, valid, 0.0)
        for reset in self.norm:
            reset.part.assign(idx, valid, reset.value)

    @torch.no_grad()
    def reset_optimizer_state(self, optimizer: torch.optim.Optimizer, idx: torch.Tensor,
                              valid: torch.Tensor) -> None:
        """Zero every per-element optimizer state (momentum, Adam moments) of the units' tensors."""
        for part in self.owned():
            for value in optimizer.state.get(part.param, {}).values():
                if torch.is_tensor(value) and value.shape == part.param.shape:
                    part.assign(idx, valid, 0.0, t=value)


# ----- helpers for unit re-initialisers (ReDo, SNR): per-unit reductions of features, fresh weights -----

def per_unit(h: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Hidden features of ``group`` as ``[S, B, n, m]``: unit j's m values for each example.

    ``[S, B, n]`` -> m = 1; conv maps ``[S, B, n, H, W]`` -> m = H·W; a flattened conv output
    ``[S, B, n·g]`` (unit j owns g consecutive inputs of the next layer) -> m = g; CReLU's
    interleaved halves (channels 2j, 2j+1) stay with unit j. Reduce over dims (1, 3).
    """
    return h.reshape(h.shape[0], h.shape[1], group.n_units, -1)


@dataclass(frozen=True)
class InitRule:
    """A fresh unit's incoming weights: U(−scale, scale) (``kind`` "uniform") or N(0, scale²) ("normal")."""

    kind: str
    scale: float

    def draw(self, seeds: torch.Tensor, step: int, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
        """``[S, *shape]`` draws keyed by (seed, step, purpose), as :mod:`plastibench.rng` draws."""
        from . import rng
        if self.kind == "uniform":
            return rng.uniform(seeds, step, purpose, shape, -self.scale, self.scale)
        return rng.normal(seeds, step, purpose, shape, self.scale)

    def block(self, seeds: torch.Tensor, purpose: str, shape: tuple[int, ...], length: int = 512):
        """An :class:`plastibench.rng.Block` whose ``at(step)`` equals ``draw(seeds, step, purpose, shape)``."""
        from . import rng
        if self.kind == "uniform":
            return rng.Block(seeds, purpose, shape, rng.uniform, length, low=-self.scale, high=self.scale)
        return rng.Block(seeds, purpose, shape, rng.normal, length, std=self.scale)


def incoming_shape(group: UnitGroup) -> tuple[int, ...]:
    """The shape of one unit's incoming weights (``(fan_in,)`` or ``(in_channels, k, k)``)."""
    part = group.incoming_weight
    return tuple(part.param.movedim(part.dim, 1).shape[2:])


def incoming_init(net: torch.nn.Module, group: UnitGroup) -> InitRule:
    """The distribution ``net`` drew ``group``'s incoming weights from at initialisation.

    A network states it with a method ``unit_init(group) -> InitRule`` (this package's networks do).
    A network without one gets CBP's convention (``methods/cbp.py::_bound``): Kaiming-uniform,
    U(±gain(act)·√(3/fan_in)), for linear units; U(±√(1/fan_in)) for conv filters.
    """
    rule = getattr(net, "unit_init", None)
    if rule is not None:
        return rule(group)
    scheme = "default" if group.incoming_weight.param.dim() > 3 else "kaiming"
    return InitRule("uniform", init_bound(scheme, group.fan_in, group.n_units, group.activation))
