"""``snp``: Shrink & Perturb's per-step rule, checked against a restatement.

Every step θ ← θ − α·(∇L(θ) + λ·θ) (coupled weight decay in plain SGD on scr), then θ ← θ + σ·ε with
ε ~ N(0, 1) from the counter-based rng keyed by (seed, step, ``snp/<parameter name>``), for every
weight and bias, output layer included. The test fails if the noise is dropped, drawn from other
keys or scaled wrongly, or if the shrink is missing or of the wrong size.
"""

import tempfile

import pytest
import torch

from plastibench import rng
from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS

LAM, SIGMA = 0.1, 1e-2  # large enough that each part of the update is far above the tolerances


def _engine(**overrides):
    cls, task = METHODS.get("snp"), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr", {"weight_decay": LAM, "perturb_scale": SIGMA, **overrides}), task,
                  task.protocol("smoke"), [0, 1], device=torch.device("cpu"), directory=tempfile.mkdtemp(),
                  config={})


def _restated(old, grad, name, seeds, step, lr, lam=LAM, sigma=SIGMA):
    shrunk = old - lr * (grad + lam * old)
    return shrunk + sigma * rng.normal(seeds, step, f"snp/{name}", tuple(old.shape[1:]))


def _close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_each_step_is_sgd_with_coupled_decay_then_gaussian_noise_on_every_parameter():
    engine = _engine()
    group = engine.optimizer.param_groups[0]
    assert group["weight_decay"] == LAM and group["momentum"] == 0
    lr, seeds = group["lr"], torch.tensor([0, 1])
    named = list(engine.net.named_parameters())
    assert len(named) == 4  # both layers' weights and biases, the output layer's included
    engine.task.start_task(0)
    for step in range(3):
        before = [p.detach().clone() for _, p in named]
        engine._step(0, step)
        for (name, p), old in zip(named, before):
            new, grad = p.detach(), p.grad.detach()
            want = _restated(old, grad, name, seeds, step, lr)
            torch.testing.assert_close(new, want, rtol=1e-5, atol=1e-7, msg=f"{name} at step {step}")
            # the wrong rules do not pass: no noise, no shrink, half the noise, another step's noise
            assert not _close(new, old - lr * (grad + LAM * old)), name
            if old.abs().max() > 1e-2:  # the biases start at 0: the shrink shows from step 1 on
                assert not _close(new, _restated(old, grad, name, seeds, step, lr, lam=0.0)), name
                assert not _close(new, _restated(old, grad, name, seeds, step, lr, lam=LAM / 2)), name
            assert not _close(new, _restated(old, grad, name, seeds, step, lr, sigma=SIGMA / 2)), name
            assert not _close(new, _restated(old, grad, name, seeds, step + 1, lr)), name
            # the perturbation has the stated scale, per seed (the seeds' noises differ)
            noise = new - (old - lr * (grad + LAM * old))
            if noise[0].numel() >= 5:
                assert 0.3 * SIGMA < noise.std() < 3 * SIGMA
            assert not torch.equal(noise[0], noise[1])


def test_zero_noise_scale_is_plain_sgd_with_weight_decay():
    engine = _engine(perturb_scale=0.0)
    lr = engine.optimizer.param_groups[0]["lr"]
    engine.task.start_task(0)
    before = [p.detach().clone() for p in engine.net.parameters()]
    engine._step(0, 0)
    for p, old in zip(engine.net.parameters(), before):
        torch.testing.assert_close(p.detach(), old - lr * (p.grad + LAM * old), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task, lam, sigma", [("scr", 1e-2, 1e-4), ("pmnist", 1e-4, 1e-5)])
def test_defaults_are_the_documented_ones(task, lam, sigma):
    assert METHODS.get("snp").hparams_for(task) == {"weight_decay": lam, "perturb_scale": sigma}
