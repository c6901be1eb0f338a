"""``nap``: LayerNorm before every nonlinearity; after each (period-th) step every weight tensor that
feeds a normalisation is rescaled to its initial per-seed norm, and each norm's (γ, β) jointly."""

import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.method import RunContext, StepInfo
from plastibench.nn import BatchedLayerNorm, BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedBatchNorm2d, BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])
NETS = {  # the ResNet-18's structure at a fraction of its widths, to keep the test fast
    "mlp": (lambda: BatchedMLP(MLPSpec((6, 16, 16, 3)), SEEDS), (6,)),
    "convnet": (lambda: BatchedConvNet(SEEDS), (3, 32, 32)),
    "resnet": (lambda: BatchedResNet18(SEEDS, num_classes=5, widths=(8, 16, 16, 16)), (3, 8, 8)),
}


def configure(net, **overrides):
    cls = METHODS.get("nap")
    method = cls(cls.hparams_for("pmnist", overrides), RunContext(seeds=SEEDS, task="pmnist", protocol=None))
    return method, method.configure_network(net)


def norm(*tensors):
    return torch.sqrt(sum(t.detach().flatten(1).pow(2).sum(1) for t in tensors))


def train(method, net, shape, steps, lr=0.5, first=0, device_step=False):
    """``steps`` SGD steps from global step ``first``; ``after_step`` gets the step as a host int, or
    as the engine gives it, a 0-dim int64 device tensor."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for step in range(first, first + steps):
        out, _ = net(torch.randn(2, 4, *shape, generator=gen))
        opt.zero_grad()
        (out - 3.0).square().sum().backward()
        opt.step()
        method.after_step(StepInfo(torch.tensor(step) if device_step else step, 0))


@pytest.mark.parametrize("kind", NETS)
def test_weight_norms_equal_the_initial_ones_after_projection(kind):
    make, shape = NETS[kind]
    method, net = configure(make())
    output = net.unit_groups()[-1].outgoing_weight.param
    hidden = [w for w in net.weight_tensors() if w is not output]
    norms = [m for m in net.modules() if isinstance(m, (BatchedLayerNorm, BatchedBatchNorm2d))]
    assert len(norms) == len(net.unit_groups()) + (0 if kind != "resnet" else 20)  # LNs (+ the ResNet's BNs)
    w0, out0 = [norm(w) for w in hidden], norm(output)
    directions0 = [w.detach() / norm(w).view(-1, *[1] * (w.dim() - 1)) for w in hidden]
    train(method, net, shape, steps=3)
    for w, n0, d0 in zip(hidden, w0, directions0):
        torch.testing.assert_close(norm(w), n0, rtol=1e-5, atol=0)
        assert not torch.allclose(w.detach() / norm(w).view(-1, *[1] * (w.dim() - 1)), d0)  # it learned
    for m in norms:  # scale and offset jointly: ‖(γ, β)‖ = ‖(1, 0)‖ = √n
        torch.testing.assert_close(norm(m.weight, m.bias), torch.full((2,), m.weight.shape[1] ** 0.5), rtol=1e-5,
                                   atol=0)
        assert not torch.allclose(m.bias, torch.zeros_like(m.bias))
    assert not torch.allclose(norm(output), out0)  # the head is not followed by a norm: not projected


def test_projection_rescales_without_turning_and_per_seed():
    method, net = configure(NETS["mlp"][0]())
    w = net.layers[0].weight
    before, n0 = w.detach().clone(), norm(w)
    with torch.no_grad():
        w[0].mul_(3.0), w[1].mul_(0.2)
    method.after_step(StepInfo(0, 0))
    torch.testing.assert_close(w.detach(), before, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(norm(w), n0)


@pytest.mark.parametrize("device_step", [False, True])
def test_period_and_project_output(device_step):
    make, shape = NETS["mlp"]
    method, net = configure(make(), period=3, project_output=True)
    w, out = net.layers[1].weight, net.layers[-1].weight
    n0, out0 = norm(w), norm(out)
    train(method, net, shape, steps=2, device_step=device_step)  # steps 0, 1: no projection yet
    assert not torch.allclose(norm(w), n0)
    train(method, net, shape, steps=1, first=2, device_step=device_step)  # after step 2: (2 + 1) % 3 == 0
    torch.testing.assert_close(norm(w), n0)
    torch.testing.assert_close(norm(out), out0)


def test_engine_step_projects_and_the_targets_are_checkpointed():
    cls, task = METHODS.get("nap"), TASKS.get("scr")
    engine = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                    device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    w = engine.net.layers[0].weight
    n0 = norm(w)
    engine.task.start_task(0)
    for step in range(3):
        engine._step(0, step)
    torch.testing.assert_close(norm(w), n0)
    state = engine.method.state_dict()
    engine.method.targets[0].mul_(2)
    engine.method.load_state_dict(state)
    torch.testing.assert_close(engine.method.targets[0], n0)



def test_projection_scales_each_tensor_as_a_whole_not_each_row():
    """Issue 11 item 15: one factor per weight tensor and seed, W ← W·‖W₀‖_F / ‖W‖_F (the rule of
    ``shared/reference/methods-and-streams.md`` and Plasticine's ``_project_weights``). Rows that
    grew unevenly keep their ratios, and the LayerNorm after the layer sees its pre-activations
    (biases are 0 at init) only rescaled, so the output does not move. A per-row projection would
    put every row back to its own initial norm and change the output."""
    method, net = configure(NETS["mlp"][0]())
    w = net.layers[0].weight
    w0 = w.detach().clone()
    with torch.no_grad():  # uneven growth within each seed's matrix
        w[0, 0].mul_(3.0)
        w[0, 5].mul_(0.5)
        w[1, 2].mul_(4.0)
    grown = w.detach().clone()
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    before, _ = net(x)
    method.after_step(StepInfo(0, 0))
    after, _ = net(x)
    torch.testing.assert_close(w.detach(), grown * (norm(w0) / norm(grown)).view(-1, 1, 1))
    rows, rows0 = w.detach().norm(dim=2), w0.norm(dim=2)
    assert (rows - rows0).abs().max() > 0.1 * rows0.mean()  # the rows are not each put back
    torch.testing.assert_close(after.detach(), before.detach(), rtol=1e-4, atol=1e-5)
