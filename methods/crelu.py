"""Concatenated ReLU (``crelu``): every hidden ReLU becomes φ(z) = [relu(z), relu(−z)].

Abbas, Zhao, Modayil, White & Machado, "Loss of plasticity in continual deep reinforcement
learning", CoLLAs 2023 (PMLR 232); the CReLU of Shang et al., ICML 2016.

Rule: a hidden layer with n units computes its pre-activations z as before and outputs the 2n
values relu(z_j), relu(−z_j), so no unit has a zero gradient on both sides and the layer's
output is never all zero; the next layer reads 2n inputs. The two outputs of unit j are
interleaved (inputs 2j and 2j+1 of the next layer, ``plastibench.nn.crelu``), which is the
concatenation [relu(z), relu(−z)] up to a fixed permutation of the next layer's inputs. It
replaces whatever activation the task's net uses (the benchmark's nets all use ReLU). Init is the
base net's rule with the actual fan-in 2n (Kaiming's ReLU gain √2 keeps the variance of the next
pre-activation, because each of the 2n inputs carries half of Var(z)).

Width adjustment (``widths = matched``, default): CReLU doubles each hidden-to-hidden weight
matrix, so all hidden widths (units, i.e. pre-activation channels) are scaled by one common
factor α, w_l ← max(1, round(α·w_l)) (halves rounded up), with α the value whose network has the
parameter count (weights, biases, BN affine) closest to the base network's, the smaller network on
a tie. Input and output sizes stay. The resulting widths (``widths = same`` keeps the base ones):

| network (task) | base widths | CReLU widths | parameters base → CReLU |
|---|---|---|---|
| MLP 784-2000×3-10 (``pmnist``) | 2000, 2000, 2000 | 1451, 1451, 1451 | 9,594,010 → 9,592,571 (−0.015 %) |
| MLP 20-5-1 (``scr``) | 5 | 5 | 111 → 116 (+4.5 %; 4 units would give 93, −16 %) |
| ConvNet, 2 classes (``cimagenet``) | 32, 64, 128, 128, 128 | 23, 45, 91, 91, 91 | 177,218 → 177,582 (+0.21 %) |
| ResNet-18, 100 classes (``icifar100``) | 64, 128, 256, 512 | 45, 90, 181, 362 | 11,224,932 → 11,229,795 (+0.04 %) |
| MLP 784-300-150-47 (``lpemnist``) | 300, 150 | 263, 131 | 287,747 → 287,853 (+0.04 %) |
| UPGD's conv net (``lpcifar10``) | 6, 16, 120, 84 | 5, 15, 110, 77 | 62,006 → 62,197 (+0.31 %) |

The ``lpcifar10`` net has no nonlinearity after its convs (as UPGD's): CReLU replaces its two fc ReLUs
only, and the scaling narrows its convs too.

On the ResNet-18 every ReLU becomes a CReLU; every conv reading a hidden map (the 1x1 downsample
convs too) reads its 2n CReLU channels, and an identity skip adds the ReLU half relu(z) of the
block input, exactly what the ReLU ResNet's identity adds (``BatchedBasicBlock``).

Unit structure: unit j owns its row of incoming weights and 2 consecutive columns of the next
layer's weight (``UnitParam(group=2)``; ``2·H·W`` for conv3 → fc1 of the ConvNet), so CBP/ReDo
replace or zero both. ``features`` are the 2n CReLU outputs per layer. Restriction: CBP's
utility reads a feature whose unit owns g > 1 next-layer inputs as a flattened map ``[S, B, n·g]``;
it works with CReLU on fully connected layers but not on conv maps (it raises a shape error), so
``cbp`` with ``crelu`` on the conv nets needs ``methods/cbp.py`` to pair channels 2j, 2j+1 first.

The net is rebuilt at configuration, so its initial weights differ from the base net's (same
rng purposes, other shapes). No hyperparameters of the paper to take; no optimizer state is
touched, nothing is reset.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

from plastibench.method import HyperparameterError, Method
from plastibench.nn import BatchedMLP
from plastibench.registry import register_method
from plastibench.vision import BatchedConvNet, BatchedResNet18


def mlp_parameters(sizes: Sequence[int], factor: int) -> int:
    """Weights and biases of an MLP with ``sizes`` units per layer whose hidden layers emit ``factor``
    outputs per unit."""
    return sum((factor if i else 1) * a * b + b for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))


def convnet_parameters(widths: Sequence[int], num_classes: int, factor: int,
                       kernels: Sequence[int] = BatchedConvNet.KERNELS, conv_activation: bool = True) -> int:
    """Weights and biases of :class:`BatchedConvNet` with ``kernels`` (2x2 max-pool after each conv,
    32x32 inputs); ``factor`` multiplies what a layer reads after a nonlinearity."""
    total, reads, side = 0, 3, 32
    for k, c in zip(kernels, widths):
        total += reads * c * k * k + c
        side, reads = (side - k + 1) // 2, (factor if conv_activation else 1) * c
    reads *= side * side
    for h in (*widths[len(kernels):], num_classes):
        total, reads = total + reads * h + h, factor * h
    return total


def resnet_parameters(widths: Sequence[int], num_classes: int, factor: int) -> int:
    """Weights, biases and BN affine parameters of :class:`BatchedResNet18` with stage ``widths``."""
    def conv(cin: int, cout: int, k: int) -> int:  # biased conv followed by a BN (2 per channel)
        return cin * cout * k * k + cout + 2 * cout

    total, inplanes = conv(3, widths[0], 3), widths[0]
    for stage, planes in enumerate(widths):
        total += conv(factor * inplanes, planes, 3) + conv(factor * planes, planes, 3)
        if stage > 0 or inplanes != planes:
            total += conv(factor * inplanes, planes, 1)
        total += 2 * conv(factor * planes, planes, 3)
        inplanes = planes
    return total + factor * widths[-1] * num_classes + num_classes


def scaled(widths: Sequence[int], alpha: float) -> tuple[int, ...]:
    return tuple(max(1, math.floor(alpha * w + 0.5)) for w in widths)


def matched_widths(widths: Sequence[int], count: Callable[[Sequence[int], int], int]) -> tuple[int, ...]:
    """The common scaling of ``widths`` whose CReLU net's ``count(widths, 2)`` is closest to the base
    ``count(widths, 1)`` (the smaller net on a tie). Every α gives the widths of one interval between
    consecutive breakpoints (k + ½)/w, so the midpoints of those intervals cover all candidates."""
    target = count(widths, 1)
    points = sorted({(k + 0.5) / w for w in widths for k in range(w)})
    alphas = [points[0] / 2] + [(a + b) / 2 for a, b in zip(points, points[1:])] + [1.0]
    best = min({scaled(widths, a) for a in alphas},
               key=lambda ws: (abs(count(ws, 2) - target), count(ws, 2)))
    return best


@register_method("crelu")
class CReLU(Method):
    claims = frozenset({"architecture"})
    summary = "concatenated ReLU (relu(z), relu(-z)) at every hidden layer, widths matched in parameters"
    paper = ("Abbas et al., Loss of plasticity in continual deep reinforcement learning, CoLLAs 2023 "
             "(PMLR 232); CReLU: Shang et al., ICML 2016")
    defaults = {"widths": "matched"}
    choices = {"widths": ("matched", "same")}
    bounds = {}  # no numeric hyperparameters

    def configure_network(self, net):
        if getattr(net, "activation_name", None) == "crelu":
            raise HyperparameterError("the network already uses CReLU")
        seeds, same = self.run.seeds, self.hp["widths"] == "same"
        if isinstance(net, BatchedMLP):
            sizes = net.spec.sizes
            hidden = sizes[1:-1] if same else matched_widths(
                sizes[1:-1], lambda ws, f: mlp_parameters((sizes[0], *ws, sizes[-1]), f))
            new = BatchedMLP(replace(net.spec, sizes=(sizes[0], *hidden, sizes[-1]), activation="crelu"), seeds)
        elif isinstance(net, BatchedConvNet):
            *hidden, head = net.weight_layers()
            k, base = head.out_features, tuple(layer.weight.shape[1] for layer in hidden)
            arch = {"kernels": net.kernels, "conv_activation": net.conv_activation}
            widths = base if same else matched_widths(base, lambda ws, f: convnet_parameters(ws, k, f, **arch))
            new = BatchedConvNet(seeds, num_classes=k, activation="crelu", widths=widths, **arch)
        elif isinstance(net, BatchedResNet18):
            k = net.fc.out_features
            base = tuple(getattr(net, f"layer{i}")[0].conv1.out_channels for i in range(1, 5))
            widths = base if same else matched_widths(base, lambda ws, f: resnet_parameters(ws, k, f))
            new = BatchedResNet18(seeds, num_classes=k, activation="crelu", widths=widths)
        else:
            raise HyperparameterError(f"crelu does not know how to rebuild the network {type(net).__name__}")
        new.train(net.training)
        return new
