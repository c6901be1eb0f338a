"""Initialisation scales (Kaiming gains, uniform bounds); a leaf module, shared by the networks
(:mod:`plastibench.nn`, :mod:`plastibench.vision`) and by unit re-initialisation
(:func:`plastibench.units.incoming_init`)."""

from __future__ import annotations

import math

def gain(activation: str) -> float:
    """Kaiming gain as in ``torch.nn.init.calculate_gain``; swish and elu use ReLU's, as the reference.

    CReLU uses ReLU's √2 with the doubled fan-in: the 2n inputs ``relu(±z)`` carry E[h²] = Var(z)/2
    each, so Var(w) = 2/(2n) keeps the next pre-activation's variance, as Kaiming does for ReLU."""
    if activation in ("relu", "swish", "elu", "crelu"):
        return math.sqrt(2.0)
    if activation == "leaky_relu":
        return math.sqrt(2.0 / (1 + 0.01**2))
    if activation == "tanh":
        return 5.0 / 3.0
    if activation in ("sigmoid", "linear"):
        return 1.0
    raise ValueError(f"unknown activation {activation!r}; "
                     "known: crelu, elu, leaky_relu, linear, relu, sigmoid, swish, tanh")


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
