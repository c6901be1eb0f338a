"""``upgd``: the utility gate (protected vs perturbed weights), the per-seed global max, the η step."""

import copy
import tempfile

import torch

from plastibench import rng
from plastibench.clock import StepClock
from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS
from plastibench.methods.upgd import UPGDOptimizer


def _optimizer(params, seeds, beta=0.999, lr=0.1, sigma=0.5, weight_decay=0.0):
    return UPGDOptimizer(params, torch.tensor(seeds), [f"p{i}" for i in range(len(params))], lr=lr,
                         weight_decay=weight_decay, beta_utility=beta, sigma=sigma)


def _param(values, grads):
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    p.grad = torch.tensor(grads, dtype=torch.float32)
    return p


def test_useful_weights_are_protected_and_useless_ones_take_the_full_noisy_step():
    # utilities −g·θ of seed 0: w = [2, 0, −0.5], b = [4, −3]: the max 4 sits in the other tensor.
    # First step, β = 0.999: û = u/(1−β) = 1000·u, ratio û/M = 250·u  ->  gates 1−ū ≈ [0, ½, 1], [0, 1]
    w = _param([[1.0, 1.0, 1.0]], [[-2.0, 0.0, 0.5]])
    b = _param([[2.0, 1.0]], [[-2.0, 3.0]])
    before_w, before_b = w.detach().clone(), b.detach().clone()
    lr, sigma = 0.1, 0.5
    _optimizer([w, b], [0], lr=lr, sigma=sigma).step()
    seeds = torch.tensor([0])
    xi_w = rng.normal(seeds, 1, "upgd/p0", (3,))
    xi_b = rng.normal(seeds, 1, "upgd/p1", (2,))
    dw, db = w.detach() - before_w, b.detach() - before_b
    assert dw[0, 0] == 0 and db[0, 0] == 0                 # highest utilities: untouched (sigmoid(500) = 1)
    torch.testing.assert_close(dw[0, 1], -lr * 0.5 * (0.0 + sigma * xi_w[0, 1]))   # zero utility: ū = ½
    torch.testing.assert_close(dw[0, 2], -lr * (0.5 + sigma * xi_w[0, 2]))          # û/M = −125: full step
    torch.testing.assert_close(db[0, 1], -lr * (3.0 + sigma * xi_b[0, 1]))          # û/M = −750: full step
    assert xi_w[0, 2].abs() > 0.01  # the noise is really part of the step


def test_steady_state_gate_uses_the_uncorrected_max_and_steps_by_eta_with_weight_decay():
    # β = 0: no trace, no correction; ū = sigmoid(u / max u). θ ← (1−ηλ)θ − η(g+σξ)(1−ū), one η (not 2η)
    w = _param([[1.0, -2.0, 0.5, 3.0]], [[-1.0, 0.25, 0.0, 0.5]])
    before, g = w.detach().clone(), w.grad.clone()
    lr, sigma, lam = 0.05, 0.2, 0.3
    _optimizer([w], [7], beta=0.0, lr=lr, sigma=sigma, weight_decay=lam).step()
    u = -g * before
    gate = 1 - torch.sigmoid(u / u.max())
    xi = rng.normal(torch.tensor([7]), 1, "upgd/p0", (4,))
    expected = (1 - lr * lam) * before - lr * (g + sigma * xi) * gate
    torch.testing.assert_close(w.detach(), expected)


def test_the_max_is_per_seed_so_other_seeds_do_not_change_a_seeds_update():
    def run(seed1_grad_scale):
        w = _param([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]], [[-1.0, -0.5, 0.2], [-1.0, -0.5, 0.2]])
        with torch.no_grad():
            w.grad[1] *= seed1_grad_scale
        _optimizer([w], [0, 1], beta=0.0, lr=0.1, sigma=0.0).step()
        return w.detach()

    a, b = run(1.0), run(100.0)
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    # and the gate really depends on the max: a global max over both seeds would change seed 0's step
    g = torch.tensor([-1.0, -0.5, 0.2])
    theta = torch.tensor([1.0, 2.0, -1.0])
    u = -g * theta
    own = theta - 0.1 * g * (1 - torch.sigmoid(u / u.max()))
    cross = theta - 0.1 * g * (1 - torch.sigmoid(u / (100 * u.max())))
    torch.testing.assert_close(b[0], own)
    assert not torch.allclose(b[0], cross)


def test_seed_alone_equals_seed_beside_others_over_several_steps():
    def run(seeds):
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(3, 4, 5, generator=gen)
        idx = torch.tensor(seeds)
        w = torch.nn.Parameter(base[idx].clone())
        opt = _optimizer([w], seeds, beta=0.9, lr=0.1, sigma=0.3, weight_decay=0.01)
        for t in range(5):
            grads = torch.sin(base * (t + 1))
            w.grad = grads[idx].clone()
            opt.step()
        return w.detach()

    together, alone = run([0, 1, 2]), run([2])
    torch.testing.assert_close(together[2], alone[0], rtol=0, atol=0)


def test_in_a_run_the_noise_is_keyed_by_the_global_step_also_after_the_state_is_cleared():
    """With the run's clock, ξ of global step k is rng.normal(seed, k + 1, ...) (the optimizer's step
    count of an unreset run), read from the block the engine prepares; a method that clears the
    optimizer state (``fire``) restarts the step count, not the noise stream."""
    seeds = torch.tensor([0, 1])
    clock = StepClock(seeds.device)
    w = torch.nn.Parameter(torch.ones(2, 3))
    lr, sigma = 0.1, 0.5
    opt = UPGDOptimizer([w], seeds, ["w"], lr=lr, weight_decay=0.0, beta_utility=0.9, sigma=sigma, clock=clock)
    for k in (0, 1, 2, 700, 701):
        if k == 700:
            opt.state.clear()
        clock.set(k, k)  # what the engine does before a segment
        rng.prepare(seeds, k, 1)
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)  # no gradient, no utility: gate ½, θ ← θ − η·σ·ξ/2
        opt.step()
        xi = rng.normal(seeds, k + 1, "upgd/w", (3,))
        torch.testing.assert_close(w.detach(), before - lr * sigma * xi * 0.5, rtol=0, atol=1e-7)
        assert opt.state[w]["step"].dtype == torch.int64 and opt.state[w]["step"].dim() == 0
    assert opt.state[w]["step"] == 2


def test_engine_builds_upgd_with_the_task_defaults_and_resumes_its_traces():
    cls, task = METHODS.get("upgd"), TASKS.get("scr")
    engine = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                    device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    assert isinstance(engine.optimizer, UPGDOptimizer) and engine.optimizer.clock is engine.clock
    group = engine.optimizer.param_groups[0]
    assert (group["lr"], group["beta_utility"], group["sigma"], group["weight_decay"]) == (0.01, 0.9999, 0.1, 0.01)
    engine.task.start_task(0)
    for step in range(3):
        engine._step(0, step)
    state = engine.optimizer.state_dict()
    assert all(torch.is_tensor(s["step"]) and s["step"] == 3 for s in state["state"].values())
    fresh = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                   device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    fresh.net.load_state_dict(engine.net.state_dict())
    fresh.optimizer.load_state_dict(copy.deepcopy(state))  # torch's state_dict() holds live tensors
    fresh.task.start_task(0)
    fresh.task.load_state_dict(copy.deepcopy(engine.task.state_dict()))
    engine._step(0, 3)
    fresh._step(0, 3)
    for a, b in zip(engine.net.parameters(), fresh.net.parameters()):
        assert torch.equal(a, b)
