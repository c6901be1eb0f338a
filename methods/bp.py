"""Backprop (``bp``): the protocol's optimizer and nothing else.

Update rule: θ ← θ − α·∇L(θ) with the protocol's optimizer (SGD; momentum and weight decay only
where the protocol sets them). This is the "base deep-learning system" whose loss of plasticity
Dohare et al. (2024) demonstrate.
"""

from plastibench.method import Method
from plastibench.registry import register_method


@register_method("bp")
class Backprop(Method):
    summary = "plain backprop with the protocol's optimizer (the baseline that loses plasticity)"
    paper = "Dohare et al., Loss of plasticity in deep continual learning, Nature 632:768-774 (2024)"
    bounds = {}  # no hyperparameters
