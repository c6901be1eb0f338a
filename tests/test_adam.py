"""``adam``: the step is torch's Adam with the configured rate and betas, not the protocol's SGD."""

import tempfile

import torch

from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS


def _engine(overrides=None) -> Engine:
    cls, task = METHODS.get("adam"), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr", overrides), task, task.protocol("smoke"), [0, 1],
                  device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})


def test_first_step_is_adams_bias_corrected_sign_step():
    engine = _engine()
    engine.task.start_task(0)
    before = [p.detach().clone() for p in engine.net.parameters()]
    engine._step(0, 0)
    lr, eps = 1e-3, 1e-8
    for p, old in zip(engine.net.parameters(), before):
        g = p.grad  # kept until the next step's zero_grad
        # step 1: m̂ = g, v̂ = g², so Δθ = −α·g/(|g| + ε) (≈ −α·sign(g)); SGD would give −0.01·g
        torch.testing.assert_close(p.detach() - old, -lr * g / (g.abs() + eps), rtol=1e-4, atol=1e-9)


def test_proper_adam_betas_reach_the_optimizer():
    engine = _engine({"beta1": "0.99", "beta2": "0.99", "lr": "1e-4"})
    group = engine.optimizer.param_groups[0]
    assert isinstance(engine.optimizer, torch.optim.Adam)
    assert group["betas"] == (0.99, 0.99) and group["lr"] == 1e-4 and group["weight_decay"] == 0
