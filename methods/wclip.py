"""Weight clipping (``wclip``): clamp every parameter into ±ζ·b after each optimizer step.

Elsayed, Lan, Lyle & Mahmood, "Weight clipping for deep continual and reinforcement learning",
Reinforcement Learning Journal 5:2198-2217 (RLC 2024). Restated from the official code,
``mohmdelsayed/weight-clipping`` ``core/optim/weight_clipping.py`` (``InitBounds`` and
``WeightClipping{SGD,Adam}.weight_clipping``; the same rule as the README's minimal version).

Update rule, after every ``optimizer.step()``, for every parameter tensor p of the network, in
``named_parameters()`` order, every seed alike:

    p ← clamp(p, −ζ·b_p, ζ·b_p)
    b_p = 1/√fan_in(p)                 for a weight (fan_in = in_features, or in_channels·k·k)
    b_p = 1/√fan_in(last weight)       for a 1-D parameter (per seed: ``[S, n]``): a layer's bias,
                                       and also a BatchNorm's weight and bias, which take the fan-in
                                       of the conv before them

The bound is b = 1/√fan_in, PyTorch's default ``nn.Linear``/``nn.Conv2d`` init bound, which the
paper calls the initialisation range s_l; the clip region is [−ζ·s_l, ζ·s_l]. Pinned choices:

* **b = 1/√fan_in from the weight's shape alone**, whatever the network's actual init: this is what
  the official code does in all its experiments, also where the init is not PyTorch's default
  (torchvision's ResNet-18, orthogonal init in its PPO agents). An early version of the repository
  (commits 48cf12f…2f029ff, before "Refactor weight clipping initialization and bounds calculation",
  ef91033, 8 Jan 2024) clipped weights to ±ζ·√(1/(fan_in+fan_out)) and biases to ±ζ; the released
  code and README use 1/√fan_in and we follow them. Consequence in this benchmark: the ``scr`` and
  ``pmnist`` MLPs are Kaiming-uniform, U(±gain·√(3/fan_in)) with gain √2 for ReLU hidden layers, so
  with ζ < √6 ≈ 2.45 (ζ < √3 for the output layer) the first clip trims the tails of the initial
  draw; the conv nets' default init (U(±1/√fan_in)) lies inside for any ζ ≥ 1.
* **BatchNorm parameters** (``icifar100``'s ResNet-18) are clipped too, to ±ζ/√fan_in of the conv
  before them, because the official ``InitBounds`` gives every 1-D parameter the bound of the last
  weight seen, and in torchvision's ResNet-18 that is the preceding conv (BN γ starts at 1, so it
  is pulled far below its init: ζ/24 for a 3x3 conv over 64 channels). ``clip_norm = false`` leaves
  BN parameters alone.
* ``clip_last_layer`` (default true, as the official default and its best runs'
  ``clip_last_layer_1.0``): false exempts the output layer's weight and bias (the official code
  skips the last two parameters).

Defaults: ζ = 1 (``zeta``), the official optimizers' default and the README's κ = 1.0. The
repository's sweeps use ζ ∈ {1, 2, 3, 4, 5}; its best runs on input-permuted MNIST
(``best_runs_beluga.file``) list ζ = 1 for Adam and both ζ = 2 and ζ = 1 for SGD, and on
label-permuted EMNIST ζ = 2 (SGD), 3-4 (Adam). Those ζ were tuned on PyTorch's default init
U(±1/√fan_in), which starts inside every bound. ``scr`` and ``pmnist`` use the reference's
Kaiming-uniform init U(±√6/√fan_in): ζ = 1 would cut the initial network down at the first step, so
there ζ = 3, the smallest value of the paper's grid {1, ..., 5} whose bound contains the init
(√6 ≈ 2.45). ``cimagenet``'s ConvNet has PyTorch's default init: ζ = 1. The ResNet-18's
Kaiming-normal init exceeds any fixed multiple of 1/√fan_in in its tails; ``icifar100`` keeps ζ = 1.
``ipmnist`` (PyTorch's default init, the protocol's SGD step size 1e-3) keeps ζ = 1: the
weight-clipping repository's run of UPGD's own stream (5000 samples a task, 1M steps, 20 seeds,
``experiments/ex1_input_permuted_mnist_stats_1M_relu.py``, ``weight_clipping_sgd_grid``) ran ζ = 1
and ζ = 2 at lr 1e-3 and its plotter keeps whichever scored best, which the code does not record;
ζ = 1 is this method's default and one of the two. ``lpemnist`` is the paper's label-permuted EMNIST with the same SGD step size 0.01 and ReLU MLP:
ζ = 2, its final SGD run (weight-clipping repository, ``experiments/ex2_label_permuted_mnist_stats2.py``
l.86-93, ``weight_clipping_sgd_grid``).

Optimizer state: untouched (as the official code, which clamps ``p.data`` after the inner
optimizer's step; momentum and Adam moments of clipped weights are kept).

Vectorizable (``plastibench.members``): ζ (each member is clamped to its own ζ·b).
"""

from __future__ import annotations

import math

import torch

from plastibench.members import per_member
from plastibench.method import POSITIVE, Method
from plastibench.registry import register_method
from plastibench.vision import BatchedBatchNorm2d


def clip_bounds(net: torch.nn.Module, zeta: float | torch.Tensor, clip_last_layer: bool = True,
                clip_norm: bool = True) -> list[tuple[str, torch.Tensor, float | torch.Tensor]]:
    """(name, parameter, ζ·b) for every clipped parameter, in ``named_parameters()`` order (ζ·b per
    member, float64, for a per-member ζ)."""
    norm_params = {id(p) for m in net.modules() if isinstance(m, BatchedBatchNorm2d) for p in m.parameters()}
    named = list(net.named_parameters())
    if not clip_last_layer:
        weight, bias = named[-2][1], named[-1][1]
        if weight.dim() < 3 or bias.dim() != 2 or bias.shape[1] != weight.shape[1]:
            raise ValueError("clip_last_layer=false expects the network's last parameters to be the output "
                             "layer's weight and bias")
        named = named[:-2]
    out, fan_in = [], None
    for name, p in named:
        if p.dim() >= 3:  # [S, out, in] or [S, out, in, k, k]
            fan_in = p[0, 0].numel()
        elif fan_in is None:
            raise ValueError(f"{name}: a 1-D parameter before any weight has no fan-in")
        if clip_norm or id(p) not in norm_params:
            out.append((name, p, zeta / math.sqrt(fan_in)))
    return out


@register_method("wclip")
class WeightClipping(Method):
    summary = "clamp every weight and bias to ±ζ/√fan_in after each optimizer step (weight clipping)"
    paper = ("Elsayed, Lan, Lyle & Mahmood, Weight clipping for deep continual and reinforcement learning, "
             "RLJ 5:2198-2217 (2024)")
    defaults = {"zeta": 1.0, "clip_last_layer": True, "clip_norm": True}
    task_defaults = {"scr": {"zeta": 3.0}, "pmnist": {"zeta": 3.0}, "lpemnist": {"zeta": 2.0}}
    bounds = {"zeta": POSITIVE}  # ζ = 0 would clamp every parameter to 0
    vectorizable = frozenset({"zeta"})

    def configure_network(self, net):
        self.clips = clip_bounds(net, self.hp["zeta"], self.hp["clip_last_layer"], self.hp["clip_norm"])
        return net

    @torch.no_grad()
    def after_step(self, info):
        for _, p, bound in self.clips:
            p.clamp_(per_member(-bound, p), per_member(bound, p))
