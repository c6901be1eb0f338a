"""``fire`` (``methods/fire.py``): at each task boundary every weight becomes its scaled polar factor.

Defining property: after ``on_task_start(t)``, t > 0, a linear weight W ``[d_out, d_in]`` satisfies
W Wᵀ = (d_out/d_in)·I (d_out ≤ d_in) or WᵀW = (d_out/d_in)·I (d_out ≥ d_in), and every kernel
position W[:, :, i, j] of a conv weight the same divided by (kh·kw)², head and downsample convs
included, once Newton–Schulz has converged; with the official 10 iterations W is exactly the
10-fold Newton–Schulz map applied to its singular values (checked against an SVD in float64).
Nothing changes before the first boundary.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.method import RunContext
from plastibench.methods.fire import Fire
from plastibench.nn import BatchedLinear, BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedConv2d, BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1, 2])
PROTOCOL = Protocol(task="test", name="fire", version=1, n_tasks=2, steps_per_task=5, batch_size=4,
                    optimizer=OptimizerSpec("sgd", lr=0.01, momentum=0.9), metric="mse", higher_is_better=False)


def fire_on(net: torch.nn.Module, seeds: torch.Tensor = SEEDS, **hp) -> Fire:
    """A Fire method configured on ``net`` with an SGD-momentum optimizer."""
    method = Fire(Fire.hparams_for("test", hp), RunContext(seeds=seeds, task="test", protocol=PROTOCOL))
    method.run.net = method.configure_network(net)
    method.run.optimizer = method.build_optimizer(list(net.parameters()), PROTOCOL.optimizer)
    return method


def weight_layers(net):
    return [(name, m) for name, m in net.named_modules() if isinstance(m, (BatchedLinear, BatchedConv2d))]


def matrices(weight: torch.Tensor) -> torch.Tensor:
    """``[S, out, in]`` or ``[S, out, in, kh, kw]`` -> ``[S·kh·kw, out, in]`` (float64)."""
    w = weight.detach().double()
    if w.dim() == 5:
        w = w.permute(0, 3, 4, 1, 2).reshape(-1, w.shape[1], w.shape[2])
    return w


def scale(weight: torch.Tensor) -> float:
    """The official √(d_out/d_in) / (kh·kw)."""
    kernel = weight.shape[3] * weight.shape[4] if weight.dim() == 5 else 1
    return math.sqrt(weight.shape[1] / weight.shape[2]) / kernel


def small_gram(m: torch.Tensor) -> torch.Tensor:
    """W Wᵀ when W is wide, WᵀW when tall: the Gram matrix that is c·I for a scaled isometry."""
    return m @ m.transpose(-2, -1) if m.shape[-2] <= m.shape[-1] else m.transpose(-2, -1) @ m


def newton_schulz_spectrum(m: torch.Tensor, iterations: int) -> torch.Tensor:
    """U·p(Σ/‖M‖_F)·Vᵀ with p(σ) = 1.5σ − 0.5σ³ applied ``iterations`` times, in float64."""
    u, sigma, vh = torch.linalg.svd(m, full_matrices=False)
    sigma = sigma / torch.linalg.matrix_norm(m).unsqueeze(-1)
    for _ in range(iterations):
        sigma = 1.5 * sigma - 0.5 * sigma**3
    return u @ torch.diag_embed(sigma) @ vh


def mlp():
    return BatchedMLP(MLPSpec((20, 32, 16, 10)), SEEDS)


def convnet():
    return BatchedConvNet(SEEDS)


@pytest.mark.parametrize("make", [mlp, convnet], ids=["mlp", "convnet"])
def test_converged_fire_makes_every_weight_a_scaled_isometry(make):
    net = make()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    fire_on(net, iterations=60).on_task_start(1)
    layers = weight_layers(net)
    assert len(layers) == (3 if make is mlp else 6)  # the output head is included
    for name, layer in layers:
        gram = small_gram(matrices(layer.weight))
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype).expand_as(gram)
        torch.testing.assert_close(gram, scale(layer.weight) ** 2 * eye, rtol=0, atol=1e-4 * scale(layer.weight) ** 2,
                                   msg=name)
        torch.testing.assert_close(layer.bias, before[f"{name}.bias"], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("make", [mlp, convnet], ids=["mlp", "convnet"])
def test_official_ten_iterations_apply_the_newton_schulz_map_to_the_singular_values(make):
    net = make()
    old = {name: matrices(layer.weight) for name, layer in weight_layers(net)}
    fire_on(net).on_task_start(1)
    for name, layer in weight_layers(net):
        expected = scale(layer.weight) * newton_schulz_spectrum(old[name], 10)
        torch.testing.assert_close(matrices(layer.weight), expected, rtol=0, atol=2e-5 * expected.abs().max().item(),
                                   msg=name)


@pytest.fixture(scope="module")
def resnet():
    """A ResNet-18 at a quarter of the paper's widths: the same layers, and per kernel position the
    same tall (conv1, downsamples), square and wide (head) matrices, for a fraction of the work."""
    return BatchedResNet18(torch.tensor([3]), num_classes=10, widths=(16, 32, 64, 128))


def test_resnet_every_conv_downsample_and_head(resnet):
    chosen = ["conv1", "layer2.0.downsample.0", "layer2.0.conv1", "fc"]
    layers = dict(weight_layers(resnet))
    old = {name: matrices(layers[name].weight) for name in chosen}
    bn = resnet.bn1.weight.detach().clone()
    fire_on(resnet, seeds=torch.tensor([3])).on_task_start(2)
    assert sum(1 for name in layers if "downsample" in name) == 3 and len(layers) == 21
    for name in chosen:
        expected = scale(layers[name].weight) * newton_schulz_spectrum(old[name], 10)
        torch.testing.assert_close(matrices(layers[name].weight), expected, rtol=0,
                                   atol=2e-5 * expected.abs().max().item(), msg=name)
    for name, layer in layers.items():  # every weight was rewritten: Frobenius norm = scale·‖p(σ)‖
        assert torch.isfinite(layer.weight).all(), name
    torch.testing.assert_close(resnet.bn1.weight, bn, rtol=0, atol=0)


def test_a_zero_head_stays_zero():
    net = BatchedConvNet(SEEDS)
    with torch.no_grad():
        net.fc3.weight.zero_()
    fire_on(net).on_task_start(1)
    assert torch.equal(net.fc3.weight, torch.zeros_like(net.fc3.weight))
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_nothing_changes_before_the_first_boundary():
    """FIRE and plain backprop run the first task identically; at the boundary FIRE acts."""
    task = TASKS.get("scr")
    engines = {}
    for name in ("fire", "bp"):
        cls = METHODS.get(name)
        engines[name] = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                               device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    for engine in engines.values():
        engine.task.start_task(0)
        engine.method.on_task_start(0)
        for step in range(20):
            engine._step(0, step)
    fire, bp = (list(engines[n].net.parameters()) for n in ("fire", "bp"))
    assert all(torch.equal(a, b) for a, b in zip(fire, bp))
    engines["fire"].method.on_task_start(1)
    assert not torch.equal(fire[0], bp[0])
    assert not engines["fire"].optimizer.state  # "all": the optimizer starts afresh, as the official loop's


@pytest.mark.parametrize("policy", ["all", "weights", "none"])
def test_optimizer_state_policy(policy):
    net = mlp()
    method = fire_on(net, optimizer_state=policy)
    out, _ = net(torch.randn(3, 4, 20))
    out.square().sum().backward()
    method.run.optimizer.step()
    method.on_task_start(1)
    state = method.run.optimizer.state
    weight, bias = net.layers[0].weight, net.layers[0].bias
    if policy == "all":
        assert not state
        return
    assert state[bias]["momentum_buffer"].abs().sum() > 0
    zeroed = not state[weight]["momentum_buffer"].any()
    assert zeroed == (policy == "weights")


def test_seed_alone_equals_seed_beside_others():
    together, alone = BatchedConvNet(SEEDS), BatchedConvNet(SEEDS[2:])
    fire_on(together).on_task_start(1)
    fire_on(alone, seeds=SEEDS[2:]).on_task_start(1)
    for (name, a), b in zip(together.named_parameters(), alone.parameters()):
        torch.testing.assert_close(a[2:], b, rtol=1e-5, atol=1e-6, msg=name)
