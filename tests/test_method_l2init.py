"""``l2init``: the term is (λ/2)·‖θ − θ₀‖² per seed, so a step pulls every parameter toward θ₀ by αλ(θ − θ₀)."""

import tempfile
from unittest import mock

import pytest
import torch

from plastibench import rng
from plastibench.engine import Engine
from plastibench.method import RunContext
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1, 2])


def fast_resnet18(seeds):
    """A BatchedResNet18 whose init draws come from torch.randn (the counter-based init of 11M weights
    per seed takes seconds; its values do not matter here)."""
    gen = torch.Generator().manual_seed(0)
    draw = lambda seeds, step, purpose, shape, std=1.0: std * torch.randn(len(seeds), *shape, generator=gen)
    with mock.patch.object(rng, "normal", draw):
        return BatchedResNet18(seeds, num_classes=10)


NETS = {
    "mlp": lambda s: BatchedMLP(MLPSpec((6, 8, 8, 3)), s),
    "convnet": lambda s: BatchedConvNet(s),
    "resnet18": lambda s: fast_resnet18(s[:2]),
}


def _method(net, seeds=SEEDS, lam=0.03):
    cls = METHODS.get("l2init")
    method = cls(cls.hparams_for("scr", {"lam": lam}), RunContext(seeds=seeds, task="scr", protocol=None))
    method.run.net = method.configure_network(net)
    method.on_task_start(0)
    return method


@torch.no_grad()
def _displace(net, seeds=SEEDS, scale=0.1, fast=False):
    """θ ← θ + δ, δ ~ N(0, scale²) (per seed from the counter-based RNG unless ``fast``); returns the δ's."""
    deltas, gen = [], torch.Generator().manual_seed(1)
    for name, p in net.named_parameters():
        d = (scale * torch.randn(p.shape, generator=gen) if fast
             else rng.normal(seeds, 1, f"test/{name}", tuple(p.shape[1:]), std=scale))
        p.add_(d)
        deltas.append(d)
    return deltas


@pytest.mark.parametrize("kind", list(NETS))
def test_term_is_half_lambda_squared_distance_and_its_gradient_is_lambda_times_displacement(kind):
    net = NETS[kind](SEEDS)
    seeds = SEEDS[: next(net.parameters()).shape[0]]
    method = _method(net, seeds, lam=0.03)
    deltas = _displace(net, seeds, fast=kind == "resnet18")
    term = method.loss_term(None, [])
    assert term.shape == (len(seeds),)
    for s in range(len(seeds)):  # direct, per seed: squared (not unsquared) norm, factor λ/2
        expected = 0.5 * 0.03 * sum(float(d[s].double().square().sum()) for d in deltas)
        assert term[s].item() == pytest.approx(expected, rel=1e-4)
    term.sum().backward()
    for (name, p), d in zip(net.named_parameters(), deltas):
        torch.testing.assert_close(p.grad, 0.03 * d, rtol=1e-4, atol=1e-7, msg=name)


def _engine(method: str, overrides=None) -> Engine:
    cls, task = METHODS.get(method), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr", overrides), task, task.protocol("smoke"), [0, 1],
                  device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})


def _start(engine):
    engine.task.start_task(0)
    engine.task.begin_task(0, engine.net, engine.optimizer)
    engine.method.on_task_start(0)


def test_a_step_is_the_plain_step_plus_the_pull_toward_theta0():
    """From the same displaced θ, l2init's SGD step minus plain backprop's is exactly −α·λ·(θ − θ₀)."""
    lam, lr = 0.05, TASKS.get("scr").protocol("smoke").optimizer.lr
    plain, reg = _engine("bp"), _engine("l2init", {"lam": lam})
    for engine in (plain, reg):
        _start(engine)
    theta0 = [p.detach().clone() for p in reg.net.parameters()]
    for net in (plain.net, reg.net):
        _displace(net, torch.tensor([0, 1]), scale=0.3)
    displaced = [p.detach().clone() for p in reg.net.parameters()]
    plain._step(0, 0)
    reg._step(0, 0)
    for p_reg, p_plain, x, x0 in zip(reg.net.parameters(), plain.net.parameters(), displaced, theta0):
        assert not torch.equal(x, x0)
        # atol: float32 rounding of θ (≈ 0.5) in both steps
        torch.testing.assert_close(p_reg.detach() - p_plain.detach(), -lr * lam * (x - x0), rtol=1e-3, atol=2e-7)


def test_theta0_is_the_parameters_when_the_first_task_begins_and_is_checkpointed():
    engine = _engine("l2init")
    with torch.no_grad():  # a task that resets part of the net at its start (cimagenet zeroes its head)
        engine.net.layers[-1].weight.zero_()
    _start(engine)
    assert torch.equal(engine.method.theta0[-2], torch.zeros_like(engine.method.theta0[-2]))
    for _ in range(5):
        engine._step(0, _)
    state = engine.method.state_dict()
    again = _engine("l2init")  # a resumed run: a fresh net and method, then the checkpoint
    again.net.load_state_dict(engine.net.state_dict())
    again.method.load_state_dict(state)
    torch.testing.assert_close(again.method.loss_term(None, []), engine.method.loss_term(None, []), rtol=0, atol=0)
    assert engine.method.loss_term(None, []).min() > 0


def test_seed_alone_equals_seed_among_others():
    terms = []
    for seeds in (SEEDS, SEEDS[2:]):
        net = BatchedConvNet(seeds)
        method = _method(net, seeds)
        _displace(net, seeds)
        terms.append(method.loss_term(None, []))
    torch.testing.assert_close(terms[0][2:], terms[1], rtol=1e-6, atol=0)

