"""The unit-structure API: for each hidden unit, its incoming weights, outgoing weights, optimizer state.

Unit-level methods (CBP, ReDo, SNR, ...) never index network tensors by hand. A network exposes
``unit_groups()``; each :class:`UnitGroup` names the tensors a unit owns and offers batched reads
(per-unit weight magnitudes ``[S, n]``) and writes (re-initialise the units ``idx[S, K]`` where
``valid[S, K]``), all without host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
