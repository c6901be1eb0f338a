"""Seed-batched vision layers and the two conv nets of Dohare et al. (Nature, 2024).

Every parameter has a leading seed axis (conv weight ``[S, out, in, k, k]``), images are
``[S, B, C, H, W]``. Per-channel operations (convolution, max-pool, batch norm) fold the seeds into
the channel axis, ``[S, B, C, H, W] -> [B, S*C, H, W]``, and run one torch kernel: a convolution
with ``groups=S``, one pool, one batch norm over ``S*C`` channels. Each seed's channels form their
own groups, so no seed's output depends on another's. Outputs come back as ``[S, B, C, H, W]``
views of ``[B, S, C, H, W]`` memory, which makes the next layer's fold free. Grouped convolution
beat unfold + batched matmul on CPU (``docs/vision-layers.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import rng
from .nn import BatchedLinear, HiddenSites, gain, init_bound, width_factor
from .units import InitRule, UnitGroup, UnitParam, UnitReset


def _fold(x: torch.Tensor) -> torch.Tensor:
    """``[S, B, C, H, W] -> [B, S*C, H, W]`` (a view when ``x`` came from :func:`_unfold`)."""
    s, b, c = x.shape[:3]
    return x.transpose(0, 1).reshape(b, s * c, *x.shape[3:])


def _unfold(y: torch.Tensor, n_seeds: int) -> torch.Tensor:
    """``[B, S*C, H, W] -> [S, B, C, H, W]``, a view."""
    return y.view(y.shape[0], n_seeds, -1, *y.shape[2:]).transpose(0, 1)


class BatchedConv2d(nn.Module):
    """``y[s] = conv2d(x[s], W[s], b[s])`` for every seed s, as one grouped convolution.

    Square kernels; ``weight[S, out, in, k, k]``, ``bias[S, out]``, ``x[S, B, in, H, W]``.
    """

    def __init__(self, n_seeds: int, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, device=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.zeros(n_seeds, out_channels, in_channels, kernel_size, kernel_size,
                                               device=device))
        self.bias = nn.Parameter(torch.zeros(n_seeds, out_channels, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.weight.shape[0]
        y = F.conv2d(_fold(x), self.weight.flatten(0, 1), self.bias.flatten(), self.stride, self.padding, groups=s)
        return _unfold(y, s)


def batched_max_pool2d(x: torch.Tensor, kernel_size: int = 2, stride: int | None = None) -> torch.Tensor:
    """``max_pool2d`` of every seed's ``[B, C, H, W]``; ``x[S, B, C, H, W]``."""
    return _unfold(F.max_pool2d(_fold(x), kernel_size, stride), x.shape[0])


def batched_flatten(x: torch.Tensor) -> torch.Tensor:
    """``[S, B, C, H, W] -> [S, B, C*H*W]`` in torch's order: channel c holds inputs ``c*H*W ...``."""
    return x.flatten(2)


class BatchedBatchNorm2d(nn.Module):
    """``BatchNorm2d`` per seed: affine ``weight``/``bias`` and running statistics are ``[S, C]``.

    As torch (momentum 0.1, eps 1e-5): train mode normalises by each seed's batch statistics over
    (B, H, W) and updates its running mean and unbiased running variance; eval mode uses them.
    """

    def __init__(self, n_seeds: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1, device=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(n_seeds, num_features, device=device))
        self.bias = nn.Parameter(torch.zeros(n_seeds, num_features, device=device))
        self.register_buffer("running_mean", torch.zeros(n_seeds, num_features, device=device))
        self.register_buffer("running_var", torch.ones(n_seeds, num_features, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(_fold(x), self.running_mean.view(-1), self.running_var.view(-1), self.weight.flatten(),
                         self.bias.flatten(), self.training, self.momentum, self.eps)
        return _unfold(y, x.shape[0])

    def unit_resets(self) -> tuple[UnitReset, ...]:
        """Channel j's reset: weight 1, bias 0, running mean 0, running var 1 (``lop/algos/res_gnt.py``)."""
        return (UnitReset(UnitParam(self.weight, dim=1), 1.0), UnitReset(UnitParam(self.bias, dim=1), 0.0),
                UnitReset(UnitParam(self.running_mean, dim=1), 0.0), UnitReset(UnitParam(self.running_var, dim=1), 1.0))


WeightLayer = BatchedConv2d | BatchedLinear


def _fan_in(layer: WeightLayer) -> int:
    return layer.weight[0, 0].numel()


def _unit_group(name: str, cur: WeightLayer, nxt: WeightLayer, norm: tuple[UnitReset, ...] = (),
                activation: str = "relu") -> UnitGroup:
    """The output units (channels) of ``cur``: rows of its weight in, ``nxt``'s weight dim 2 out.

    When ``nxt`` reads a flattened conv output, channel j owns its ``H*W`` consecutive inputs (and
    with CReLU, whose channels 2j and 2j+1 belong to unit j, its 2 or ``2*H*W`` consecutive inputs).
    """
    n = cur.weight.shape[1]
    return UnitGroup(name=name, n_units=n, fan_in=_fan_in(cur), activation=activation,
                     incoming_weight=UnitParam(cur.weight, dim=1), incoming_bias=UnitParam(cur.bias, dim=1),
                     outgoing_weight=UnitParam(nxt.weight, dim=2, group=nxt.weight.shape[2] // n),
                     outgoing_bias=nxt.bias, norm=norm)


class BatchedConvNet(HiddenSites, nn.Module):
    """A conv net of 2x2-max-pooled convolutions then fully connected layers, one per seed.

    Defaults give the Continual ImageNet ConvNet (``lop/nets/conv_net.py``): conv 5x5 3->32, conv 3x3
    32->64, conv 3x3 64->128 (no padding), each ReLU then 2x2 max-pool; flatten 128x2x2 = 512; fc
    512->128->128->``num_classes``, ReLU between. ``kernels`` gives one square kernel per conv
    (``conv1``, ``conv2``, ...), ``widths`` their channels and then the hidden fc widths (``fc1``,
    ``fc2``, ...; the output layer follows). ``conv_activation=False`` puts no nonlinearity after a
    conv (conv then max-pool), as UPGD's ``ConvolutionalNetworkReLU`` (``lpcifar10``): its hidden
    units, sites and features are then the fc layers' only. Init is PyTorch's default for
    ``nn.Conv2d``/``nn.Linear``: ``kaiming_uniform_(a=√5)`` gives weights U(±√(1/fan_in)), and
    biases are U(±1/√fan_in), fan_in = in_channels·k·k or in_features; drawn from
    ``rng.uniform(seeds, 0, "init/<layer>/weight" | "init/<layer>/bias", ...)``.
    ``forward(x[S, B, 3, 32, 32])`` returns the logits and the reference's feature list: with conv
    activations, each pooled conv map (the last one flattened, ``[S, B, 512]`` by default); then
    each hidden fc layer's output.

    ``activation`` (``crelu`` doubles what the next layer reads); extension points at the
    nonlinearities: :class:`plastibench.nn.HiddenSites` (applied before the max-pool).
    """

    WIDTHS = (32, 64, 128, 128, 128)
    KERNELS = (5, 3, 3)

    def __init__(self, seeds: torch.Tensor, num_classes: int = 2, activation: str = "relu",
                 widths: tuple[int, ...] = WIDTHS, kernels: tuple[int, ...] = KERNELS,
                 conv_activation: bool = True, side: int = 32):
        super().__init__()
        self._init_sites(activation)
        self.kernels, self.conv_activation = tuple(kernels), conv_activation
        s, dev, f = seeds.numel(), seeds.device, width_factor(activation)
        n_conv = len(kernels)
        fcs = (*widths[n_conv:], num_classes)
        self.layer_names = [f"conv{i + 1}" for i in range(n_conv)] + [f"fc{j + 1}" for j in range(len(fcs))]
        reads = 3  # what the next layer reads: channels, then features
        for name, k, c in zip(self.layer_names, kernels, widths):
            setattr(self, name, BatchedConv2d(s, reads, c, k, device=dev))
            side = (side - k + 1) // 2
            reads = (f if conv_activation else 1) * c
        reads *= side * side
        for name, h in zip(self.layer_names[n_conv:], fcs):
            setattr(self, name, BatchedLinear(s, reads, h, device=dev))
            reads = f * h
        with torch.no_grad():
            for name, layer in zip(self.layer_names, self.weight_layers()):
                bound = init_bound("default", _fan_in(layer), 0, "relu")
                for kind in ("weight", "bias"):
                    p = getattr(layer, kind)
                    p.copy_(rng.uniform(seeds, 0, f"init/{name}/{kind}", tuple(p.shape[1:]), -bound, bound))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        layers, n_conv, site, features = self.weight_layers(), len(self.kernels), 0, []
        for conv in layers[:n_conv]:
            z = conv(x)
            if self.conv_activation:
                z, site = self.activate(site, z), site + 1
            x = batched_max_pool2d(z)
            features.append(x)
        x = batched_flatten(x)
        features = features[:-1] + [x] if self.conv_activation else []  # conv maps are features if activated
        for fc in layers[n_conv:-1]:
            x, site = self.activate(site, fc(x)), site + 1
            features.append(x)
        return layers[-1](x), features

    def weight_layers(self) -> list[WeightLayer]:
        return [getattr(self, name) for name in self.layer_names]

    def unit_groups(self) -> list[UnitGroup]:
        """The layers followed by a nonlinearity, each paired with the next weight layer: the convs
        (channels; the last conv's channel c owns its H*W consecutive fc1 columns) when
        ``conv_activation``, then the hidden fc layers."""
        layers = self.weight_layers()
        first = 0 if self.conv_activation else len(self.kernels)
        pairs = list(zip(self.layer_names, layers, layers[1:]))[first:]
        return [_unit_group(name, cur, nxt, self.site_resets(i), self.activation_name)
                for i, (name, cur, nxt) in enumerate(pairs)]

    def unit_init(self, group: UnitGroup) -> InitRule:
        """A hidden unit's incoming weights, as initialised: U(±√(1/fan_in)) (torch's default, convs
        and linears alike)."""
        return InitRule("uniform", init_bound("default", group.fan_in, group.n_units, group.activation))

    def weight_tensors(self) -> list[torch.Tensor]:
        """The conv and linear weights (no biases), for weight-magnitude diagnostics."""
        return [layer.weight for layer in self.weight_layers()]


class BatchedBasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` with biased convs (``lop/nets/torchvision_modified_resnet.py``).

    ``factor`` is the activation's outputs per channel (2 for CReLU): the convs, the downsample
    included, read ``factor`` times the channels; an identity skip then adds the ReLU half
    (channels 0, 2, 4, ...) of the interleaved CReLU input, i.e. exactly what a ReLU block's
    identity adds. ``activate(i, z)`` (default ReLU) is the net's nonlinearity at site ``first + i``.
    """

    def __init__(self, n_seeds: int, inplanes: int, planes: int, stride: int = 1, device=None, factor: int = 1):
        super().__init__()
        self.factor = factor
        self.conv1 = BatchedConv2d(n_seeds, factor * inplanes, planes, 3, stride, 1, device=device)
        self.bn1 = BatchedBatchNorm2d(n_seeds, planes, device=device)
        self.conv2 = BatchedConv2d(n_seeds, factor * planes, planes, 3, 1, 1, device=device)
        self.bn2 = BatchedBatchNorm2d(n_seeds, planes, device=device)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                BatchedConv2d(n_seeds, factor * inplanes, planes, 1, stride, device=device),
                BatchedBatchNorm2d(n_seeds, planes, device=device))

    def forward(self, x: torch.Tensor, features: list[torch.Tensor], activate=None, first: int = 0) -> torch.Tensor:
        act = activate or (lambda i, z: torch.relu(z))
        out = act(first, self.bn1(self.conv1(x)))
        features.append(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        else:
            identity = x if self.factor == 1 else x[:, :, ::self.factor]
        out = act(first + 1, self.bn2(self.conv2(out)) + identity)
        features.append(out)
        return out


class BatchedResNet18(HiddenSites, nn.Module):
    """The class-incremental CIFAR-100 ResNet-18 (``lop/nets/torchvision_modified_resnet.py``), one per seed.

    Stem conv 3x3 stride 1 pad 1 (64) + BN + ReLU, no max-pool; BasicBlocks [2, 2, 2, 2] of widths
    64/128/256/512, strides 1/2/2/2, 1x1-conv + BN downsample; every conv has a bias; global average
    pool; fc 512->``num_classes``. Init as ``kaiming_init_resnet_module``: every conv weight (also
    downsample) ~ N(0, 2/fan_in) (Kaiming-normal, fan_in, ReLU), fc weight ~ N(0, 1/512) (linear
    gain), biases 0, BN weight 1 and bias 0; drawn from ``rng.normal(seeds, 0, "init/<module>/weight")``.
    Module names follow torchvision's (``layer2.0.downsample.0.weight``). ``train()``/``eval()``
    switch the BNs between batch and running statistics. ``forward`` returns the logits and the
    reference's 17 features: the stem output, per block the post-bn1 ReLU and the post-residual ReLU
    outputs, the last of them replaced by the pooled ``[S, B, 512]`` vector.

    Options (defaults give the paper's net): ``widths`` of the four stages (the stem has the first)
    and ``activation`` (``crelu``: see :class:`BatchedBasicBlock` for the skip); extension points at
    the 17 ReLUs (:class:`plastibench.nn.HiddenSites`): a site's pre-activation is the BN output,
    at a block's second ReLU the BN output plus the skip.
    """

    WIDTHS = (64, 128, 256, 512)

    def __init__(self, seeds: torch.Tensor, num_classes: int = 100, activation: str = "relu",
                 widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self._init_sites(activation)
        s, dev, f = seeds.numel(), seeds.device, width_factor(activation)
        self.conv1 = BatchedConv2d(s, 3, widths[0], 3, 1, 1, device=dev)
        self.bn1 = BatchedBatchNorm2d(s, widths[0], device=dev)
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(
                BatchedBasicBlock(s, inplanes, planes, stride, device=dev, factor=f),
                BatchedBasicBlock(s, planes, planes, device=dev, factor=f)))
            inplanes = planes
        self.fc = BatchedLinear(s, f * widths[-1], num_classes, device=dev)
        with torch.no_grad():
            for name, m in self.named_modules():
                if isinstance(m, (BatchedConv2d, BatchedLinear)):
                    std = gain("relu" if isinstance(m, BatchedConv2d) else "linear") / math.sqrt(_fan_in(m))
                    m.weight.copy_(rng.normal(seeds, 0, f"init/{name}/weight", tuple(m.weight.shape[1:]), std))

    def blocks(self) -> list[BatchedBasicBlock]:
        return [m for m in self.modules() if isinstance(m, BatchedBasicBlock)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.activate(0, self.bn1(self.conv1(x)))
        features = [x]
        for i, block in enumerate(self.blocks()):
            x = block(x, features, self.activate, 1 + 2 * i)
        features[-1] = x.mean((3, 4))
        return self.fc(features[-1]), features

    def unit_groups(self) -> list[UnitGroup]:
        """The 17 hidden layers of ``lop/algos/res_gnt.py::ResGnT``: every conv but the downsample
        ones, in module order, each paired with the next such weight layer (the fc for the last)
        and with the BN that follows it, which re-initialisation resets.

        As in ResGnT, a block's conv2 is paired with the next block's conv1, although its output
        also reaches later layers through the residual path, so zeroed outgoing weights do not
        silence a replaced unit there.
        """
        hidden = [("conv1", self.conv1, self.bn1)]
        for name, block in self.named_modules():
            if isinstance(block, BatchedBasicBlock):
                hidden += [(f"{name}.conv1", block.conv1, block.bn1), (f"{name}.conv2", block.conv2, block.bn2)]
        nxt = [conv for _, conv, _ in hidden[1:]] + [self.fc]
        return [_unit_group(name, conv, after, bn.unit_resets() + self.site_resets(i), self.activation_name)
                for i, ((name, conv, bn), after) in enumerate(zip(hidden, nxt))]

    def unit_init(self, group: UnitGroup) -> InitRule:
        """A hidden unit's incoming weights (conv filters), as initialised: N(0, 2/fan_in) (Kaiming-normal)."""
        return InitRule("normal", gain("relu") / group.fan_in ** 0.5)

    def weight_tensors(self) -> list[torch.Tensor]:
        """Every conv weight (downsample included) and the fc weight, no biases or BN parameters.
        (The reference's CIFAR analysis averages |θ| over all parameters, BN included.)"""
        return [m.weight for m in self.modules() if isinstance(m, (BatchedConv2d, BatchedLinear))]
