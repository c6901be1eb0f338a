"""Parseval regularisation (``parseval``): keep every hidden layer's rows orthogonal, W Wᵀ ≈ s_l·I.

Chung, Cherif, Precup & Meger, "Parseval regularization for continual reinforcement learning",
NeurIPS 2024 (arXiv 2412.07224). Restated from the official code, ``wechu/parseval_reg``
``parseval_reg/agent.py`` (the ``parseval_reg_network`` loss in ``PPO_Agent.update``).

Update rule, a loss term per seed, every step:

    loss_term = λ · Σ_l c_l · ‖W_l W_lᵀ − s_l·I‖²_F,    c_l = (64 / n_l)²  (``width_scale``, else 1)

over the weight matrices W_l [n_l × m_l] of every layer except the output layer: all hidden linear
layers and every convolution (the ResNet's downsample convs included). A conv kernel
[out, in, k, k] is reshaped to [out, in·k·k] (rows = filters), as FIRE's ``vision/interventions/
parseval.py`` does; the official code has no conv layers. Biases and BatchNorm parameters are not
regularised (the official code regularises only weights of the layers it names ``linear_orthog``;
FIRE's extra term (γ² − s)² on norm-layer scales is not part of it).

Pinned choices, from the official code where sources disagree:

* **Output layer excluded**: the official networks name the hidden layers ``linear_orthog_*`` and
  the output ``linear_output``, and only the former are regularised (``parseval_last_layer`` exists
  but is marked "removed from uses"). FIRE regularises every weight; Plasticine only one layer.
* **s per layer from the initial rows** (``target`` = "init", default): s_l = ‖W_l⁰‖²_F / n_l, the
  mean squared row norm of layer l's weight at configuration, per seed. The official code pairs
  s = init_gain² (default gain √2, so s = 2) with its orthogonal init (``orthogonal_layer_init``),
  whose rows all have squared norm exactly gain²: the penalty starts at 0 (up to the off-diagonal
  terms of a layer with more rows than columns) and constrains only how the rows turn. Our networks
  keep their own init (the ConvNet's U(±√(1/fan_in)) rows have ‖w‖² ≈ 1/3; Kaiming rows ≈ 2), which
  every other method trains from, so we keep the pairing by taking s from that init instead of
  switching this method to an orthogonal one. A fixed s = 2 on the ConvNet pulled every hidden row
  toward √6 ≈ 2.45 times its initial norm. Deliberate deviation: random rows are neither orthogonal
  nor of equal norm, so the penalty starts at those (small) defects instead of 0. ``target`` =
  "fixed" uses ``s`` for every layer (Plasticine's ``PRLinear`` and FIRE: s = 1; the official
  s = 2 belongs with its orthogonal init).
* **Width scaling** (``width_scale``, default true): the official loss multiplies λ by
  (64 / net_width)², "since the original parseval_reg was tuned for width 64"; its hidden layers all
  have width net_width = rows of W. Our layers differ in width, so the factor is taken per layer
  with n_l = its number of rows (output units or filters).

Defaults: λ = 1e-3 (``lam``), the official value for its gridworld and MetaWorld sequences
(``parseval_reg/main.py``; 1e-4 for CARL LunarLander and DMC Quadruped), also Plasticine's
``PRLinear`` default and FIRE's ``parseval_reg.coef``. The paper has no supervised stream, so no
per-task values are set.

Optimizer state: untouched (the term only adds to the gradient).

Vectorizable (``plastibench.members``): λ and s (per member: its term's factor, its fixed target).
"""

from __future__ import annotations

import torch

from plastibench.members import per_member
from plastibench.method import NON_NEGATIVE, POSITIVE, Method
from plastibench.nn import BatchedLinear
from plastibench.registry import register_method
from plastibench.vision import BatchedConv2d


def hidden_weights(net: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every linear and conv weight of ``net`` in module order, except the last (the output layer's)."""
    layers = [(name, m) for name, m in net.named_modules() if isinstance(m, (BatchedLinear, BatchedConv2d))]
    return [(f"{name}.weight", m.weight) for name, m in layers[:-1]]


def initial_row_norm(weight: torch.Tensor) -> torch.Tensor:
    """s = ‖W‖²_F / rows per seed, ``[S]``: the mean squared row norm (a conv filter is a row)."""
    w = weight.detach().flatten(2)
    return w.square().sum((1, 2)) / w.shape[1]


def parseval_penalty(weight: torch.Tensor, s: torch.Tensor | float,
                     eye: torch.Tensor | None = None) -> torch.Tensor:
    """‖W Wᵀ − s·I‖²_F per seed, ``[S]``, with W = ``weight`` reshaped to ``[S, rows, rest]`` and
    ``s`` a number or a per-seed ``[S]``."""
    w = weight.flatten(2)
    gram = torch.bmm(w, w.transpose(1, 2))
    if eye is None:
        eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    s = torch.as_tensor(s, dtype=w.dtype, device=w.device).reshape(-1, 1, 1)
    return (gram - s * eye).square().sum((1, 2))


@register_method("parseval")
class Parseval(Method):
    summary = "Parseval regularisation: loss + λ·Σ_l ‖W_l W_lᵀ − s_l·I‖²_F over hidden layers (rows orthogonal)"
    paper = ("Chung, Cherif, Precup & Meger, Parseval regularization for continual reinforcement learning, "
             "NeurIPS 2024")
    defaults = {"lam": 1e-3, "target": "init", "s": 2.0, "width_scale": True}
    choices = {"target": ("init", "fixed")}
    bounds = {"lam": NON_NEGATIVE, "s": POSITIVE}  # s: the rows' squared norm with target "fixed"
    vectorizable = frozenset({"lam", "s"})

    def configure_network(self, net):
        self.weights = hidden_weights(net)
        self.eyes = {}
        for _, w in self.weights:
            self.eyes.setdefault(w.shape[1], torch.eye(w.shape[1], dtype=w.dtype, device=w.device))
        self.targets = [initial_row_norm(w) if self.hp["target"] == "init"
                        else torch.as_tensor(self.hp["s"], dtype=w.dtype, device=w.device).expand(w.shape[0]).clone()
                        for _, w in self.weights]
        return net

    def loss_term(self, out, features):
        total = None
        for (_, w), s in zip(self.weights, self.targets):
            scale = (64.0 / w.shape[1]) ** 2 if self.hp["width_scale"] else 1.0
            term = scale * parseval_penalty(w, s, self.eyes[w.shape[1]])
            total = term if total is None else total + term
        return per_member(self.hp["lam"], total) * total

    def state_dict(self):
        return {"targets": [t.clone() for t in self.targets]}

    def load_state_dict(self, state):
        for mine, saved in zip(self.targets, state["targets"], strict=True):
            mine.copy_(saved)
