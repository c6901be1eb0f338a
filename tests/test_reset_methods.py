"""``head-reset`` and ``full-reset``: fresh draws from the network's own init at task boundaries only,
keyed by (seed, task); BN statistics and momentum kept unless asked, as the reference."""

from __future__ import annotations

import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.method import HyperparameterError
from plastibench.registry import METHODS, TASKS
from plastibench.reinit import draw_seeds

CPU = torch.device("cpu")


def engine(method, task="scr", seeds=(0, 1, 2), data_dir=None, overrides=None):
    cls, task_cls = METHODS.get(method), TASKS.get(task)
    return Engine(cls, cls.hparams_for(task, overrides), task_cls, task_cls.protocol("smoke"), list(seeds),
                  device=CPU, directory=tempfile.mkdtemp(), config={}, data_dir=data_dir,
                  verify=data_dir is None)


def train_a_little(e, steps=20):
    e.task.start_task(0)
    for step in range(steps):
        e._step(0, step)


def params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def test_head_reset_redraws_only_the_output_layer_at_each_boundary():
    e = engine("head-reset")
    train_a_little(e)
    before = params(e.net)
    e.method.on_task_start(0)  # the first task starts from the initial network: nothing happens
    assert all(torch.equal(before[k], v) for k, v in params(e.net).items())
    e.method.on_task_start(1)
    after = params(e.net)
    fresh = params(e.task.network(draw_seeds(e.ctx.seeds, 1)))
    assert torch.equal(after["layers.1.weight"], fresh["layers.1.weight"])
    assert torch.equal(after["layers.1.bias"], fresh["layers.1.bias"])
    assert not torch.equal(after["layers.1.weight"], before["layers.1.weight"])
    assert torch.equal(after["layers.0.weight"], before["layers.0.weight"])  # hidden layers untouched
    e.method.on_task_start(2)
    assert not torch.equal(params(e.net)["layers.1.weight"], after["layers.1.weight"])  # a new draw per task


def test_a_seeds_redraw_does_not_depend_on_the_seeds_beside_it():
    together, alone = engine("full-reset"), engine("full-reset", seeds=(2,))
    for e in (together, alone):
        e.method.on_task_start(3)
    for (name, a), (_, b) in zip(together.net.named_parameters(), alone.net.named_parameters()):
        assert torch.equal(a[2], b[0]), name


def test_full_reset_redraws_everything_and_keeps_momentum_unless_asked():
    for reset_state in (False, True):
        e = engine("full-reset", overrides={"reset_optimizer_state": reset_state})
        train_a_little(e)
        e.method.on_task_start(1)
        fresh = params(e.task.network(draw_seeds(e.ctx.seeds, 1)))
        assert all(torch.equal(v, fresh[k]) for k, v in params(e.net).items())
        momenta = [e.optimizer.state[p].get("momentum_buffer") for p in e.net.parameters()]
        momenta = [m for m in momenta if m is not None]
        if e.optimizer.defaults["momentum"] == 0:
            assert momenta == []  # scr uses plain SGD: nothing to keep or reset
        assert all((m.abs().sum() == 0) == reset_state for m in momenta)


def test_full_reset_keeps_batchnorm_statistics_as_the_reference(tiny_cifar100):
    for reset_bn in (False, True):
        e = engine("full-reset", task="icifar100", seeds=(0, 1), data_dir=tiny_cifar100,
                   overrides={"reset_bn_statistics": reset_bn})
        e.task.verify = False
        train_a_little(e, steps=2)
        stats = e.net.bn1.running_mean.clone()
        assert stats.abs().sum() > 0
        e.method.on_task_start(1)
        assert torch.equal(e.net.bn1.running_mean, torch.zeros_like(stats) if reset_bn else stats)
        assert torch.equal(e.net.bn1.weight, torch.ones_like(e.net.bn1.weight))
        # momentum is kept by default (icifar100 trains with SGD momentum 0.9)
        buf = e.optimizer.state[e.net.conv1.weight]["momentum_buffer"]
        assert buf.abs().sum() > 0


def test_a_reset_after_an_architecture_change_is_refused_before_training():
    for name in ("full-reset+crelu", "head-reset+crelu"):
        e = engine(name)
        with pytest.raises(HyperparameterError, match="crelu"):
            e.method.on_task_start(0)

