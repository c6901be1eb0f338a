"""``trac``: θ = θ_ref + S·Δ around the base optimizer, the erfi tuner, per-seed inner products, state."""

import copy
import math
import tempfile

import numpy as np
import pytest
import scipy.special
import torch

from plastibench.engine import Engine
from plastibench.methods.trac import BETAS, TRACOptimizer, dawson, erfi
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS

SPEC = MLPSpec((4, 6, 1))


def _data(n_seeds_total=3, steps=12):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(steps, n_seeds_total, 8, 4, generator=gen), torch.randn(steps, n_seeds_total, 8, 1, generator=gen)


def _train(net, opt, seeds, steps=12, data=None):
    xs, ys = data if data is not None else _data(steps=steps)
    idx = torch.tensor(seeds)
    for t in range(steps):
        out, _ = net(xs[t][idx])
        loss = ((out - ys[t][idx]) ** 2).mean((1, 2)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def _trac(net, seeds, lr=0.05, momentum=0.0):
    base = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    return TRACOptimizer(base, torch.tensor(seeds))


def test_erfi_and_dawson_match_scipy():
    x = np.concatenate([[0.0, 1e-12, 1e-5, 0.19999, 0.2, 0.2001, 1 / math.sqrt(2)], np.linspace(-9, 9, 361), [15.5, 25.0]])
    t = torch.tensor(x, dtype=torch.float64)
    np.testing.assert_allclose(dawson(t).numpy(), scipy.special.dawsn(x), rtol=1e-13, atol=0)
    np.testing.assert_allclose(erfi(t).numpy(), scipy.special.erfi(x), rtol=1e-13, atol=0)
    assert erfi(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


class FixedScale(TRACOptimizer):
    """TRAC whose tuner always returns a total scale ``c`` (spread over the betas)."""

    c = 1.0
    tuned = 0

    def tune(self, h):
        self.tuned += 1
        return torch.full_like(self.trac["s"], self.c / len(BETAS))


@pytest.mark.parametrize("c, momentum", [(1.0, 0.0), (1.0, 0.9), (0.5, 0.0), (0.5, 0.9)])
def test_with_the_scale_fixed_trac_is_the_base_optimizer_scaled(c, momentum):
    """θ = θ_ref + c·Δ with Δ the sum of base updates: c = 1 is the base optimizer itself; any fixed c
    is SGD (with momentum) whose step size is c·α."""
    seeds = [0, 1]
    torch.manual_seed(0)
    a = BatchedMLP(SPEC, torch.tensor(seeds))
    b = copy.deepcopy(a)
    opt = FixedScale(torch.optim.SGD(a.parameters(), lr=0.05, momentum=momentum), torch.tensor(seeds))
    opt.c = c
    xs, ys = _data()
    _train(a, opt, seeds, steps=1, data=(xs[:1], ys[:1]))
    state = {key: opt.trac[key] for key in ("s", "variance", "sigma")}
    _train(a, opt, seeds, steps=11, data=(xs[1:], ys[1:]))
    _train(b, torch.optim.SGD(b.parameters(), lr=0.05 * c, momentum=momentum), seeds)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert opt.tuned == 12  # one TRAC update per optimizer step
    # the state is updated in place (a captured step replays into the same tensors)
    assert all(opt.trac[key] is t for key, t in state.items())
    torch.testing.assert_close(opt.trac["s"].sum(1), torch.full((2,), c))


def _reference_one_seed(net_params, grads_fn, lr, steps):
    """A per-seed restatement of the official ``_step`` loop (one network, global dot products);
    returns the final parameters and the scale Σ s_j after every step."""
    betas = torch.tensor(BETAS)
    s, variance, sigma = torch.zeros(6), torch.zeros(6), torch.full((6,), 1e-8)
    f_term = 1e-8 / scipy.special.erfi(1 / math.sqrt(2))
    params = [p.clone() for p in net_params]
    ref = [p.clone() for p in params]
    scales = []
    for t in range(steps):
        grads = grads_fn(params, t)
        before = [p.clone() for p in params]
        stepped = [p - lr * g for p, g in zip(params, grads)]        # the base SGD step
        deltas = [(u - r) / (s.sum() + 1e-8) for u, r in zip(before, ref)]
        updates = [p - u for p, u in zip(stepped, before)]
        h = sum(torch.dot(d.flatten(), g.flatten()) for d, g in zip(deltas, grads))
        deltas = [d + u for d, u in zip(deltas, updates)]
        variance = variance * betas ** 2 + h ** 2
        sigma = sigma * betas - h
        ratio = (sigma / (math.sqrt(2) * torch.sqrt(variance) + 1e-8)).double().numpy()
        s = torch.tensor(f_term, dtype=torch.float32) * torch.tensor(scipy.special.erfi(ratio), dtype=sigma.dtype)
        scales.append(s.sum())
        scale = max(s.sum(), 0.0)
        params = [r + d * scale for r, d in zip(ref, deltas)]
    return params, torch.stack(scales)


class LoggingTRAC(TRACOptimizer):
    def tune(self, h):
        s = super().tune(h)
        self.log = getattr(self, "log", []) + [s.sum(1)]
        return s


def test_batched_update_equals_the_per_seed_reference_loop():
    """Inner products are per seed over all of that seed's parameters; S, v, σ per seed."""
    seeds, steps, lr = [0, 1, 2], 80, 0.5
    torch.manual_seed(3)
    # parameters in float64 (TRAC's state stays float32, as the code's), so that float32 rounding
    # amplified where S nearly cancels does not hide a wrong formula
    net = BatchedMLP(SPEC, torch.tensor(seeds)).double()
    start = [p.detach().clone() for p in net.parameters()]
    xs, ys = (t.double() for t in _data(steps=steps))
    opt = LoggingTRAC(torch.optim.SGD(net.parameters(), lr=lr), torch.tensor(seeds))
    _train(net, opt, seeds, steps=steps, data=(xs, ys))
    log = torch.stack(opt.log, 1)  # [S, steps]

    for k in seeds:
        def grads_fn(params, t, k=k):
            single = BatchedMLP(SPEC, torch.tensor([k])).double()
            with torch.no_grad():
                for dst, src in zip(single.parameters(), params):
                    dst.copy_(src.unsqueeze(0))
            out, _ = single(xs[t][[k]])
            ((out - ys[t][[k]]) ** 2).mean().backward()
            return [p.grad[0] for p in single.parameters()]

        expected, scales = _reference_one_seed([p[k] for p in start], grads_fn, lr, steps)
        torch.testing.assert_close(log[k], scales, rtol=1e-6, atol=1e-14)
        for got, want in zip(net.parameters(), expected):
            torch.testing.assert_close(got.detach()[k], want, rtol=1e-6, atol=1e-9)
    assert (log[:, -1] > 1e-4).all() and (log[:, :10] < 1e-5).all()  # S grew from ~1e-7
    moved = (next(net.parameters()).detach() - start[0]).abs().amax((1, 2))
    assert (moved > 1e-4).all()


class SignedScale(TRACOptimizer):
    """A tuner giving seed 0 the total scale +0.5 and seed 1 the total scale −0.5."""

    def tune(self, h):
        sign = torch.tensor([1.0, -1.0]).unsqueeze(1)
        return sign * torch.full_like(self.trac["s"], 0.5 / len(BETAS))


def test_a_seed_whose_scale_is_not_positive_sits_at_its_initialisation():
    """max(S, 0): with S ≤ 0 the parameters are θ_ref; Δ then reads back as 0 every step."""
    torch.manual_seed(0)
    net = BatchedMLP(SPEC, torch.tensor([0, 1]))
    start = [p.detach().clone() for p in net.parameters()]
    opt = SignedScale(torch.optim.SGD(net.parameters(), lr=0.1), torch.tensor([0, 1]))
    _train(net, opt, [0, 1], steps=5)
    for p, p0 in zip(net.parameters(), start):
        assert torch.equal(p[1], p0[1])
        assert not torch.equal(p[0], p0[0])


def test_seeds_are_independent():
    """Changing seed 1's data leaves seed 0's trajectory bit-identical; seed 0 alone gives the same."""
    xs, ys = _data(steps=20)
    runs = []
    for variant in range(2):
        x, y = xs.clone(), ys.clone()
        if variant:
            x[:, 1] *= 3.0
            y[:, 1] = -y[:, 1]
        torch.manual_seed(0)
        net = BatchedMLP(SPEC, torch.tensor([0, 1]))
        runs.append(_train(net, _trac(net, [0, 1], lr=0.5), [0, 1], steps=20, data=(x, y)))
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a[0], b[0])
        assert not torch.equal(a[1], b[1])
    torch.manual_seed(0)
    pair = BatchedMLP(SPEC, torch.tensor([0, 1]))
    alone = BatchedMLP(SPEC, torch.tensor([0]))
    with torch.no_grad():
        for dst, src in zip(alone.parameters(), pair.parameters()):
            dst.copy_(src[:1])
    _train(alone, _trac(alone, [0], lr=0.5), [0], steps=20, data=(xs, ys))
    for a, b in zip(runs[0].parameters(), alone.parameters()):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-7)


def test_state_dict_round_trip_continues_bit_identically():
    seeds = [0, 1]
    xs, ys = _data(steps=20)
    torch.manual_seed(0)
    net = BatchedMLP(SPEC, torch.tensor(seeds))
    opt = _trac(net, seeds, lr=0.5, momentum=0.9)
    _train(net, opt, seeds, steps=10, data=(xs[:10], ys[:10]))
    state = copy.deepcopy(opt.state_dict())
    assert set(state["trac"]) == {"ref", "s", "variance", "sigma"}
    assert state["state"]  # the base optimizer's momentum travels alongside

    other = copy.deepcopy(net)
    other_opt = _trac(other, seeds, lr=0.5, momentum=0.9)
    other_opt.load_state_dict(state)
    assert other_opt.state is other_opt.base.state and other_opt.param_groups is other_opt.base.param_groups
    live = [other_opt.trac[key] for key in ("s", "variance", "sigma")] + other_opt.trac["ref"]
    _train(net, opt, seeds, steps=10, data=(xs[10:], ys[10:]))
    _train(other, other_opt, seeds, steps=10, data=(xs[10:], ys[10:]))
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    for key in ("s", "variance", "sigma"):
        assert torch.equal(opt.trac[key], other_opt.trac[key])
    # the loaded state is the state the steps update, in place
    assert all(a is b for a, b in zip(live, [other_opt.trac[key] for key in ("s", "variance", "sigma")]
                                        + other_opt.trac["ref"]))


def test_engine_wraps_the_protocol_optimizer_and_composes_with_adam():
    task = TASKS.get("scr")
    for name, base in (("trac", torch.optim.SGD), ("adam+trac", torch.optim.Adam)):
        cls = METHODS.get(name)
        engine = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                        device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
        assert isinstance(engine.optimizer, TRACOptimizer) and isinstance(engine.optimizer.base, base)
        engine.task.start_task(0)
        before = [p.detach().clone() for p in engine.net.parameters()]
        engine._step(0, 0)
        # first step: Δ_0 = 0, S_1 = s_prev/erfi(1/√2)·Σ erfi(β_j) ≈ 1e-7, so θ_1 = θ_0 + S_1·u_0 ≈ θ_0
        s1 = 1e-8 / scipy.special.erfi(1 / math.sqrt(2)) * scipy.special.erfi(np.array(BETAS, dtype=np.float32)).sum()
        torch.testing.assert_close(engine.optimizer.trac["s"].sum(1), torch.full((2,), s1, dtype=torch.float32))
        for p, old in zip(engine.net.parameters(), before):
            torch.testing.assert_close(p.detach(), old, rtol=0, atol=1e-6)
