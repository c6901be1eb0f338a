"""Seed-batched layers: every parameter has a leading seed axis ``[S, ...]``.

One batched model trains S independent networks in lockstep. A linear layer holds
``weight[S, out, in]`` and ``bias[S, out]`` and computes ``x[S, B, in] -> [S, B, out]`` with one
batched matmul, so a step costs about the same host time for 1 seed or 64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import rng
from .units import UnitGroup, UnitParam

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": nn.functional.leaky_relu,
    "swish": nn.functional.silu,
    "elu": nn.functional.elu,
}


def gain(activation: str) -> float:
    """Kaiming gain as in ``torch.nn.init.calculate_gain``; swish and elu use ReLU's, as the reference."""
    if activation in ("relu", "swish", "elu"):
        return math.sqrt(2.0)
    if activation == "leaky_relu":
        return math.sqrt(2.0 / (1 + 0.01**2))
    if activation == "tanh":
        return 5.0 / 3.0
    if activation in ("sigmoid", "linear"):
        return 1.0
    raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")


def init_bound(scheme: str, fan_in: int, fan_out: int, activation: str) -> float:
    """Half-width b of the uniform init U(-b, b), by the reference's names (``lop/algos/gnt.py``)."""
    if scheme == "kaiming":
        return gain(activation) * math.sqrt(3.0 / fan_in)
    if scheme == "default":
        return math.sqrt(1.0 / fan_in)
    if scheme == "lecun":
        return math.sqrt(3.0 / fan_in)
    if scheme == "xavier":
        return gain(activation) * math.sqrt(6.0 / (fan_in + fan_out))
    raise ValueError(f"unknown init {scheme!r}; known: kaiming, default, lecun, xavier")


class BatchedLinear(nn.Module):
    """``y[s] = x[s] @ W[s].T + b[s]`` for every seed s at once."""

    def __init__(self, n_seeds: int, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(n_seeds, out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(n_seeds, out_features, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


@dataclass(frozen=True)
class MLPSpec:
    """Architecture of a fully connected net: ``sizes = (in, hidden..., out)``."""

    sizes: tuple[int, ...]
    activation: str = "relu"


class BatchedMLP(nn.Module):
    """A seed-batched MLP with the reference's init (``lop/nets/deep_ffnn.py``, ``ffnn.py``).

    Hidden weights ~ U(±gain(act)·√(3/fan_in)) (Kaiming-uniform), output weights ~ U(±√(3/fan_in))
    (Kaiming-uniform with linear gain), all biases 0. ``forward`` returns the output and the list of
    post-activation hidden representations, which methods and diagnostics read.
    """

    def __init__(self, spec: MLPSpec, seeds: torch.Tensor):
        super().__init__()
        self.spec = spec
        self.activation_name = spec.activation
        self.act = ACTIVATIONS[spec.activation]
        s = seeds.numel()
        self.layers = nn.ModuleList(
            BatchedLinear(s, a, b, device=seeds.device) for a, b in zip(spec.sizes[:-1], spec.sizes[1:])
        )
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                last = i == len(self.layers) - 1
                act = "linear" if last else spec.activation
                bound = init_bound("kaiming", layer.in_features, layer.out_features, act)
                layer.weight.copy_(rng.uniform(seeds, 0, f"init/layer{i}", tuple(layer.weight.shape[1:]),
                                               -bound, bound))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
            features.append(x)
        return self.layers[-1](x), features

    def unit_groups(self) -> list[UnitGroup]:
        """Hidden layer i's units: rows of ``layers[i]`` in, columns of ``layers[i+1]`` out."""
        return [
            UnitGroup(
                name=f"layer{i}",
                n_units=cur.out_features,
                fan_in=cur.in_features,
                activation=self.activation_name,
                incoming_weight=UnitParam(cur.weight, dim=1),
                incoming_bias=UnitParam(cur.bias, dim=1),
                outgoing_weight=UnitParam(nxt.weight, dim=2),
                outgoing_bias=nxt.bias,
            )
            for i, (cur, nxt) in enumerate(zip(self.layers[:-1], self.layers[1:]))
        ]

    def weight_tensors(self) -> list[torch.Tensor]:
        """The weight matrices (no biases), for weight-magnitude diagnostics."""
        return [layer.weight for layer in self.layers]
