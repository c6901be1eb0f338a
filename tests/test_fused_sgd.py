"""Plain SGD applied inside the backward of large linear layers: the same training as the optimizer's
update (to float rounding), only where nothing else needs the gradients."""

import dataclasses
import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS

CPU = torch.device("cpu")


def _engine(method, data_dir, **hp):
    cls, task = METHODS.get(method), TASKS.get("pmnist")
    proto = dataclasses.replace(task.protocol("smoke"), n_tasks=1)  # 784-32-32-32-10: the first layer is large
    return Engine(cls, cls.hparams_for("pmnist", hp or None), task, proto, [0, 1, 2], device=CPU,
                  directory=tempfile.mkdtemp(), config={}, data_dir=data_dir, verify=False)


@pytest.mark.parametrize("method, hp", [("bp", {}), ("cbp", {"replacement_rate": 0.001})])
def test_fused_update_trains_as_the_optimizer_does(tiny_mnist, method, hp):
    fused, plain = _engine(method, tiny_mnist, **hp), _engine(method, tiny_mnist, **hp)
    assert fused.fused_sgd == 1
    for m in plain.net.modules():
        if hasattr(m, "fuse_sgd"):
            m.fuse_sgd(None)
    for e in (fused, plain):
        e.task.start_task(0)
        e.train_steps(0, 0, 60)
    first = fused.net.layers[0]
    assert first.weight.grad is None and plain.net.layers[0].weight.grad is not None  # no gradient written
    for (name, a), (_, b) in zip(fused.net.named_parameters(), plain.net.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["adam", "l2", "upgd", "spectral", "cbp+l2"])
def test_not_fused_where_something_else_needs_the_gradients(tiny_mnist, method):
    assert _engine(method, tiny_mnist).fused_sgd == 0
