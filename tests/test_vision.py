"""Seed-batched vision layers and nets (``plastibench/vision.py``) against plain torch modules.

Each seed of a batched model is copied into a standard torch network built from ``nn.Conv2d``,
``nn.BatchNorm2d`` and ``nn.Linear`` that restates the reference architecture
(``lop/nets/conv_net.py``, ``lop/nets/torchvision_modified_resnet.py``): outputs, features,
gradients and BN running statistics must agree seed by seed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plastibench import rng
from plastibench.vision import (BatchedBatchNorm2d, BatchedConv2d, BatchedConvNet, BatchedResNet18,
                                batched_flatten, batched_max_pool2d)

SEEDS = torch.tensor([3, 5, 7])
S = len(SEEDS)


def close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-4, scale: float = 1e-3) -> None:
    """``a ≈ b`` up to ``rtol`` of the larger of ``max|b|`` and ``scale``."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(scale, b.abs().max().item()),
                               msg=lambda m: f"{what}: {m}")


def per_seed_params(batched: nn.Module, s: int) -> dict[str, torch.Tensor]:
    return {k: v[s].clone() for k, v in batched.state_dict().items()}


def load_seed(ref: nn.Module, batched: nn.Module, s: int) -> nn.Module:
    """Seed s of ``batched`` into the plain torch module ``ref`` (same parameter names)."""
    missing, unexpected = ref.load_state_dict(per_seed_params(batched, s), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return ref


def check_grads(batched: nn.Module, refs: list[nn.Module], rtol: float = 1e-4) -> None:
    """Every parameter's gradient, seed by seed. A conv bias before a train-mode BN has gradient 0 up
    to rounding, so tolerances are relative to the largest gradient of the whole network."""
    ref_params = [dict(r.named_parameters()) for r in refs]
    scale = max(p.grad.abs().max().item() for rp in ref_params for p in rp.values())
    for name, p in batched.named_parameters():
        for s, rp in enumerate(ref_params):
            close(p.grad[s], rp[name].grad, f"grad {name} seed {s}", rtol, 1e-2 * scale)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cin, cout, k, stride, padding", [(3, 4, 5, 1, 0), (4, 6, 3, 2, 1), (4, 6, 1, 2, 0)])
def test_conv_equals_torch_conv_per_seed(cin, cout, k, stride, padding):
    conv = BatchedConv2d(S, cin, cout, k, stride, padding)
    with torch.no_grad():
        conv.weight.copy_(rng.normal(SEEDS, 0, "w", tuple(conv.weight.shape[1:])))
        conv.bias.copy_(rng.normal(SEEDS, 0, "b", (cout,)))
    x = rng.normal(SEEDS, 0, "x", (2, cin, 9, 9)).requires_grad_()
    y = conv(x)
    target = rng.normal(SEEDS, 0, "t", tuple(y.shape[1:]))
    (y * target).sum().backward()
    for s in range(S):
        ref = load_seed(nn.Conv2d(cin, cout, k, stride, padding), conv, s)
        xs = x[s].detach().clone().requires_grad_()
        ys = ref(xs)
        (ys * target[s]).sum().backward()
        close(y[s], ys, f"output seed {s}")
        close(x.grad[s], xs.grad, f"input grad seed {s}")
        close(conv.weight.grad[s], ref.weight.grad, f"weight grad seed {s}")
        close(conv.bias.grad[s], ref.bias.grad, f"bias grad seed {s}")


def test_max_pool_and_flatten_per_seed():
    x = rng.normal(SEEDS, 0, "x", (2, 4, 7, 7))
    pooled = batched_max_pool2d(x)
    assert pooled.shape == (S, 2, 4, 3, 3)
    for s in range(S):
        assert torch.equal(pooled[s], F.max_pool2d(x[s], 2, 2))
        assert torch.equal(batched_flatten(pooled)[s], pooled[s].reshape(2, -1))  # torch's view(-1, C*H*W)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # the layout BatchedConv2d returns
    assert torch.equal(batched_max_pool2d(strided), pooled) and torch.equal(batched_flatten(strided), x.flatten(2))


def test_batchnorm_equals_torch_batchnorm_per_seed():
    """Train mode: per-seed batch statistics and running-stat updates; eval mode: running stats."""
    bn = BatchedBatchNorm2d(S, 4)
    with torch.no_grad():
        bn.weight.copy_(rng.uniform(SEEDS, 0, "g", (4,), 0.5, 1.5))
        bn.bias.copy_(rng.normal(SEEDS, 0, "b", (4,)))
    refs = [load_seed(nn.BatchNorm2d(4), bn, s) for s in range(S)]
    for step in range(3):
        x = (2 + 3 * rng.normal(SEEDS, step, "x", (5, 4, 3, 3))).requires_grad_()
        t = rng.normal(SEEDS, step, "t", (5, 4, 3, 3))
        bn.zero_grad()
        y = bn(x)
        (y * t).sum().backward()
        for s, ref in enumerate(refs):
            ref.zero_grad()
            xs = x[s].detach().clone().requires_grad_()
            ys = ref(xs)
            (ys * t[s]).sum().backward()
            close(y[s], ys, f"step {step} seed {s} output")
            close(x.grad[s], xs.grad, f"step {step} seed {s} input grad")
            close(bn.weight.grad[s], ref.weight.grad, "weight grad")
            close(bn.bias.grad[s], ref.bias.grad, "bias grad")
            close(bn.running_mean[s], ref.running_mean, "running mean")
            close(bn.running_var[s], ref.running_var, "running var")
    bn.eval()
    x = rng.normal(SEEDS, 9, "x", (2, 4, 3, 3))
    y = bn(x)
    for s, ref in enumerate(refs):
        close(y[s], ref.eval()(x[s]), f"eval seed {s}")
    assert not torch.equal(bn.running_mean[0], bn.running_mean[1]), "each seed keeps its own statistics"


# --------------------------------------------------------------------------------------------
# Plain torch restatements of the reference networks
# --------------------------------------------------------------------------------------------

class TorchConvNet(nn.Module):
    """``lop/nets/conv_net.py::ConvNet`` (``predict``), standard torch modules."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 32, 5), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 128, 3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(512, 128), nn.Linear(128, 128), nn.Linear(128, num_classes)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        x1 = self.pool(torch.relu(self.conv1(x)))
        x2 = self.pool(torch.relu(self.conv2(x1)))
        x3 = self.pool(torch.relu(self.conv3(x2))).view(-1, 512)
        x4 = torch.relu(self.fc1(x3))
        x5 = torch.relu(self.fc2(x4))
        return self.fc3(x5), [x1, x2, x3, x4, x5]


class TorchBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 3, stride, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x, features):
        out = torch.relu(self.bn1(self.conv1(x)))
        features.append(out)
        out = self.bn2(self.conv2(out))
        out = torch.relu(out + (x if self.downsample is None else self.downsample(x)))
        features.append(out)
        return out


class TorchResNet18(nn.Module):
    """``lop/nets/torchvision_modified_resnet.py::build_resnet18``, standard torch modules."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1), nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(TorchBasicBlock(64, 64), TorchBasicBlock(64, 64))
        self.layer2 = nn.Sequential(TorchBasicBlock(64, 128, 2), TorchBasicBlock(128, 128))
        self.layer3 = nn.Sequential(TorchBasicBlock(128, 256, 2), TorchBasicBlock(256, 256))
        self.layer4 = nn.Sequential(TorchBasicBlock(256, 512, 2), TorchBasicBlock(512, 512))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        features = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x, features)
        features.pop(-1)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        features.append(x)
        return self.fc(x), features


@pytest.fixture(scope="module")
def resnet_at_init() -> tuple[BatchedResNet18, dict[str, torch.Tensor]]:
    net = BatchedResNet18(SEEDS, num_classes=10)  # built once: drawing 3 x 11 M normals takes seconds
    return net, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture
def resnet(resnet_at_init) -> BatchedResNet18:
    """The module's ResNet, back at its initial state and in train mode."""
    net, init = resnet_at_init
    net.load_state_dict(init)
    net.zero_grad(set_to_none=True)
    return net.train()


def n_params(net: nn.Module, per_seed: bool) -> int:
    return sum(p[0].numel() if per_seed else p.numel() for p in net.parameters())


def run_against_references(net, refs, x, rtol):
    """Forward + backward of the batched net and of each seed's reference; compare everything."""
    out, features = net(x)
    target = rng.normal(SEEDS, 1, "target", tuple(out.shape[1:]))
    net.zero_grad()
    ((out * target).sum() + sum(h.square().mean((1, *range(2, h.dim()))).sum() for h in features)).backward()
    for s, ref in enumerate(refs):
        ref.zero_grad()
        ref_out, ref_features = ref(x[s])
        ((ref_out * target[s]).sum() + sum(h.square().mean() for h in ref_features)).backward()
        close(out[s], ref_out, f"output seed {s}", rtol)
        assert len(features) == len(ref_features)
        for i, (h, rh) in enumerate(zip(features, ref_features)):
            close(h[s], rh, f"feature {i} seed {s}", rtol)
    check_grads(net, refs, rtol)


# --------------------------------------------------------------------------------------------
# Networks: equal to the torch restatements, seed by seed
# --------------------------------------------------------------------------------------------

def test_convnet_equals_torch_convnet_per_seed():
    net = BatchedConvNet(SEEDS)
    refs = [load_seed(TorchConvNet(), net, s) for s in range(S)]
    run_against_references(net, refs, rng.uniform(SEEDS, 0, "x", (4, 3, 32, 32)), 1e-4)


def test_resnet_equals_torch_resnet_per_seed_in_train_and_eval_mode(resnet):
    refs = [load_seed(TorchResNet18(num_classes=10), resnet, s) for s in range(S)]
    x = rng.normal(SEEDS, 0, "x", (2, 3, 16, 16))
    with torch.no_grad():  # two train-mode steps move the running statistics
        for step in range(2):
            resnet(rng.normal(SEEDS, step + 1, "x", (4, 3, 16, 16)))
            for s, ref in enumerate(refs):
                ref(rng.normal(SEEDS, step + 1, "x", (4, 3, 16, 16))[s])
    for s, ref in enumerate(refs):
        for name, buf in ref.named_buffers():
            if "running" in name:
                close(resnet.get_buffer(name)[s], buf, f"{name} seed {s}")
    run_against_references(resnet, refs, x, 2e-3)
    out, _ = resnet.eval()(x)
    for s, ref in enumerate(refs):
        close(out[s], ref.eval()(x[s])[0], f"eval output seed {s}", 1e-3)


# --------------------------------------------------------------------------------------------
# Architecture and initialisation
# --------------------------------------------------------------------------------------------

def test_architecture_shapes_and_parameter_counts(resnet):
    net = BatchedConvNet(SEEDS)
    out, features = net(torch.zeros(S, 2, 3, 32, 32))
    assert out.shape == (S, 2, 2)
    assert [tuple(h.shape[2:]) for h in features] == [(32, 14, 14), (64, 6, 6), (512,), (128,), (128,)]
    assert n_params(net, True) == n_params(TorchConvNet(), False) == 2432 + 18496 + 73856 + 65664 + 16512 + 258
    out, features = resnet(torch.zeros(S, 2, 3, 8, 8))
    assert out.shape == (S, 2, 10) and len(features) == 17
    widths = [64] + [w for w in (64, 128, 256, 512) for _ in range(4)]
    assert [h.shape[2] for h in features] == widths and features[-1].shape == (S, 2, 512)
    assert n_params(resnet, True) == n_params(TorchResNet18(num_classes=10), False)
    assert n_params(TorchResNet18(), False) == 11_220_132 + 4_800  # torchvision's CIFAR ResNet-18 + conv biases


def test_convnet_init_is_torch_default():
    """nn.Conv2d / nn.Linear defaults: weights and biases ~ U(±1/√fan_in)."""
    net = BatchedConvNet(torch.arange(8))
    for name, layer in net.named_children():
        fan_in = layer.weight[0, 0].numel()
        bound = 1 / math.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            assert p.abs().max() < bound and p.abs().max() > 0.9 * bound, name
            if p.numel() >= 8 * 128:
                assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.05, name
                assert abs(p.mean().item()) < 0.05 * bound, name


def test_resnet_init_is_the_references(resnet):
    """``kaiming_init_resnet_module``: convs N(0, 2/fan_in), fc N(0, 1/fan_in), biases 0, BN 1/0."""
    for name, m in resnet.named_modules():
        if isinstance(m, BatchedConv2d):
            std = math.sqrt(2 / m.weight[0, 0].numel())
            assert abs(m.weight.std().item() / std - 1) < 0.06, name
            assert abs(m.weight.mean().item()) < 0.06 * std, name
            assert not m.bias.any(), name
        if isinstance(m, BatchedBatchNorm2d):
            assert (m.weight == 1).all() and not m.bias.any() and not m.running_mean.any()
            assert (m.running_var == 1).all()
    assert abs(resnet.fc.weight.std().item() * math.sqrt(512) - 1) < 0.05 and not resnet.fc.bias.any()


def test_init_is_deterministic_and_per_seed(resnet):
    together, again, alone = BatchedConvNet(SEEDS), BatchedConvNet(SEEDS), BatchedConvNet(SEEDS[1:2])
    for (name, p), q, r in zip(together.named_parameters(), again.parameters(), alone.parameters()):
        assert torch.equal(p, q) and torch.equal(p[1:2], r), name
        assert not torch.equal(p[0], p[1]), name
    w = resnet.layer3[1].conv2.weight
    expected = rng.normal(SEEDS[1:2], 0, "init/layer3.1.conv2/weight", tuple(w.shape[1:]), math.sqrt(2 / 2304))
    assert torch.equal(w[1:2], expected), "each seed's init is its own counter-based draw"


# --------------------------------------------------------------------------------------------
# Unit structure
# --------------------------------------------------------------------------------------------

def test_convnet_unit_groups_and_conv3_to_fc1_mapping():
    net = BatchedConvNet(SEEDS)
    groups = net.unit_groups()
    assert [(g.name, g.n_units, g.fan_in, g.outgoing_weight.group) for g in groups] == [
        ("conv1", 32, 75, 1), ("conv2", 64, 288, 1), ("conv3", 128, 576, 4), ("fc1", 128, 512, 1), ("fc2", 128, 128, 1)]
    assert groups[0].outgoing_weight.param is net.conv2.weight and groups[4].outgoing_bias is net.fc3.bias
    assert groups[2].outgoing_magnitude().shape == (S, 128)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    c = 37
    idx = torch.tensor([[c], [c], [5]])
    valid = torch.tensor([[True], [False], [True]])
    new = torch.full((S, 1, 64, 3, 3), 0.5)
    groups[2].reinitialise(idx, valid, new)
    after = net.state_dict()
    fc1 = before["fc1.weight"].clone()
    fc1[0, :, 4 * c:4 * c + 4] = 0
    fc1[2, :, 20:24] = 0
    assert torch.equal(after["fc1.weight"], fc1), "exactly fc1 columns 4c..4c+3 of the valid seeds are zeroed"
    conv3 = before["conv3.weight"].clone()
    conv3[0, c] = 0.5
    conv3[2, 5] = 0.5
    assert torch.equal(after["conv3.weight"], conv3)
    bias = before["conv3.bias"].clone()
    bias[0, c] = bias[2, 5] = 0
    assert torch.equal(after["conv3.bias"], bias)
    for k in before:
        if k not in ("fc1.weight", "conv3.weight", "conv3.bias"):
            assert torch.equal(before[k], after[k]), k
    groups[0].reinitialise(torch.full((S, 1), 11), torch.ones(S, 1, dtype=torch.bool), torch.zeros(S, 1, 3, 5, 5))
    assert not net.conv2.weight[:, :, 11].any() and net.conv2.weight[:, :, 12].all()


def test_resnet_unit_groups_follow_resgnt_and_reset_batchnorm(resnet):
    groups = resnet.unit_groups()
    assert len(groups) == 17
    assert groups[0].name == "conv1" and groups[-1].name == "layer4.1.conv2"
    assert [g.n_units for g in groups] == [64] * 5 + [128] * 4 + [256] * 4 + [512] * 4
    modules = dict(resnet.named_modules())
    for g, after in zip(groups, groups[1:]):
        assert g.outgoing_weight.param is after.incoming_weight.param, g.name  # each with the next weight layer
    for g in groups:
        assert g.incoming_weight.param is modules[g.name].weight and g.incoming_bias.param is modules[g.name].bias
        bn = modules[g.name.replace("conv", "bn")]  # conv1 -> bn1, layer1.0.conv2 -> layer1.0.bn2
        owned = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
        assert len(g.norm) == 4 and all(r.part.param is t for r, t in zip(g.norm, owned)), g.name
    assert groups[2].outgoing_weight.param is resnet.layer1[1].conv1.weight  # conv2 -> the next block's conv1
    assert groups[-1].outgoing_weight.param is resnet.fc.weight and groups[-1].outgoing_bias is resnet.fc.bias
    assert all("downsample" not in g.name for g in groups)
    group, bn = groups[5], resnet.layer2[0].bn1
    assert group.incoming_weight.param is resnet.layer2[0].conv1.weight
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    with torch.no_grad():
        for t in tensors:
            t.copy_(rng.uniform(SEEDS, 0, "bn", tuple(t.shape[1:]), 0.1, 2.0))
    before = [t.clone() for t in tensors]
    idx, valid = torch.tensor([[7], [7], [9]]), torch.tensor([[True], [False], [True]])
    group.reinitialise(idx, valid, torch.zeros(S, 1, 64, 3, 3))
    for name, t, old, value in zip(("weight", "bias", "running_mean", "running_var"), tensors, before, (1, 0, 0, 1)):
        old[0, 7] = old[2, 9] = value
        assert torch.equal(t, old), name
    opt = torch.optim.SGD(resnet.parameters(), lr=0.1, momentum=0.9)
    opt.state[bn.weight]["momentum_buffer"] = momentum = torch.ones_like(bn.weight)
    group.reset_optimizer_state(opt, idx, valid)
    assert momentum[0, 7] == 0 and momentum[2, 9] == 0 and momentum.sum() == momentum.numel() - 2


def test_weight_tensors(resnet):
    net = BatchedConvNet(SEEDS)
    assert [tuple(w.shape[1:3]) for w in net.weight_tensors()] == [(32, 3), (64, 32), (128, 64), (128, 512),
                                                                    (128, 128), (2, 128)]
    assert len(resnet.weight_tensors()) == 17 + 3 + 1  # convs, downsample convs, fc
