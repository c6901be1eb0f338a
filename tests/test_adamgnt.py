"""``cbp.optimizer=adamgnt``: the reference's AdamGnT (``lop/utils/AdamGnT.py``) with GnT's per-unit
state reset (``lop/algos/gnt.py::GnT.update_optim_params``), for ``cbp`` and ``cbp+adam``."""

from __future__ import annotations

import dataclasses
import math
import tempfile

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench.checks import check_step
from plastibench.cli import app
from plastibench.engine import Engine
from plastibench.method import HyperparameterError
from plastibench.optim import AdamGnT, make_optimizer
from plastibench.registry import METHODS, TASKS

CPU = torch.device("cpu")
SCR = TASKS.get("scr")
# Every unit mature at once and ρ·|E| = 0.2·5 = 1: one unit of each seed replaced every step.
ACTIVE = {"replacement_rate": "0.2", "maturity_threshold": "0", "optimizer": "adamgnt"}


def tiny(n_tasks=2, steps=20):
    return dataclasses.replace(SCR.protocol("smoke"), n_tasks=n_tasks, steps_per_task=steps)


def engine(method: str, overrides: dict, seeds=(0, 1, 2)) -> Engine:
    cls = METHODS.get(method)
    return Engine(cls, cls.hparams_for("scr", overrides), SCR, tiny(), list(seeds), device=CPU,
                  directory=tempfile.mkdtemp(), config={})


class Restated:
    """AdamGnT as ``lop/utils/AdamGnT.py`` defines it, one seed and one element at a time: a step
    count t per element, θ ← θ − lr·(1 − β2^t)·m/(√v + ε) (m not bias-corrected)."""

    def __init__(self, values: list[float], lr: float, betas: tuple[float, float], eps: float):
        self.theta = list(values)
        self.t, self.m, self.v = [0] * len(values), [0.0] * len(values), [0.0] * len(values)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps

    def step(self, grads: list[float]) -> None:
        for i, g in enumerate(grads):
            self.t[i] += 1
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            self.theta[i] -= self.lr * (1 - self.b2 ** self.t[i]) * self.m[i] / (math.sqrt(self.v[i]) + self.eps)

    def reset(self, flat_indices: list[int]) -> None:
        for i in flat_indices:
            self.t[i], self.m[i], self.v[i] = 0, 0.0, 0.0


def test_adamgnt_with_unit_resets_follows_the_reference_rule():
    seeds = torch.tensor([0, 1, 2])
    net = SCR(tiny(), seeds).network()
    spec = dataclasses.replace(SCR.protocol("smoke").optimizer, name="adamgnt", lr=0.01, betas=(0.9, 0.99))
    params = list(net.parameters())
    opt = make_optimizer(params, spec)
    assert type(opt) is AdamGnT
    group = net.unit_groups()[0]
    w_in, b_in, w_out = group.incoming_weight.param, group.incoming_bias.param, group.outgoing_weight.param
    k_in, k_bias, k_out = (next(k for k, p in enumerate(params) if p is q) for q in (w_in, b_in, w_out))
    ref = {(k, s): Restated(p[s].flatten().tolist(), 0.01, (0.9, 0.99), spec.eps)
           for k, p in enumerate(params) for s in range(3)}
    # GnT's reset of unit j: m, v and t of W_in[j, :], b_in[j] and W_out[:, j] (per seed; an invalid
    # slot changes nothing); the next layer's bias keeps its state
    idx = torch.tensor([[1, 3], [0, 2], [4, 2]])
    valid = torch.tensor([[True, True], [True, False], [False, True]])
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        for (k, s), r in ref.items():
            r.step(params[k].grad[s].flatten().tolist())
        if step == 2:
            group.reset_optimizer_state(opt, idx, valid)
            for s in range(3):
                for j in idx[s][valid[s]].tolist():
                    fan_in, n_out = w_in.shape[2], w_out.shape[1]
                    ref[k_in, s].reset([j * fan_in + i for i in range(fan_in)])
                    ref[k_bias, s].reset([j])
                    ref[k_out, s].reset([o * w_out.shape[2] + j for o in range(n_out)])
    for (k, s), r in ref.items():
        p = params[k]
        torch.testing.assert_close(p.detach()[s].flatten(), torch.tensor(r.theta), rtol=1e-5, atol=1e-7)
        assert opt.state[p]["steps"][s].flatten().tolist() == r.t  # per element, reset per unit
    assert {tuple(ref[k_bias, s].t) for s in range(3)} == {(6, 3, 6, 3, 6), (3, 6, 6, 6, 6),
                                                                        (6, 6, 3, 6, 6)}


def test_a_loaded_state_takes_the_parameters_dtype_and_continues_exactly():
    p = torch.nn.Parameter(torch.randn(2, 3))
    opt, gen = AdamGnT([p], lr=0.1), torch.Generator().manual_seed(1)
    grads = [torch.randn(2, 3, generator=gen) for _ in range(4)]
    for g in grads[:2]:
        p.grad = g
        opt.step()
    saved = opt.state_dict()
    saved["state"] = {i: {k: v.double() for k, v in s.items()} for i, s in saved["state"].items()}
    q = torch.nn.Parameter(p.detach().clone())
    other = AdamGnT([q], lr=0.1)
    other.load_state_dict(saved)  # as a checkpoint saved elsewhere (a "step" key would stay float64)
    assert other.state[q]["steps"].dtype == torch.float32
    for g in grads[2:]:
        p.grad, q.grad = g, g.clone()
        opt.step()
        other.step()
    assert torch.equal(p, q)


@pytest.mark.parametrize("method, prefix", [("cbp", ""), ("cbp+adam", "cbp.")])
def test_replaced_units_restart_their_step_counts_in_a_run(method, prefix):
    """With adamgnt (and ``reset_optimizer_state`` at its default, off) the step count of a unit's
    incoming weights, bias and outgoing weights is the steps since it was last replaced: its age."""
    run = engine(method, {prefix + k: v for k, v in ACTIVE.items()})
    assert type(run.optimizer) is AdamGnT
    run.task.start_task(0)
    for step in range(12):
        run._step(0, step)
    cbp = run.method if method == "cbp" else run.method.components[0]
    age, group = cbp.state[0]["age"].float(), cbp.groups[0]
    assert age.min() < 6 < age.max()  # units were replaced, at different steps
    state = run.optimizer.state
    torch.testing.assert_close(state[group.incoming_weight.param]["steps"], age[:, :, None].expand(-1, -1, 20))
    torch.testing.assert_close(state[group.incoming_bias.param]["steps"], age)
    torch.testing.assert_close(state[group.outgoing_weight.param]["steps"], age[:, None, :])
    assert (state[group.outgoing_bias]["steps"] == 12).all()  # the next layer's bias is not reset


def test_cbp_adam_uses_adams_settings():
    run = engine("cbp+adam", {"cbp.optimizer": "adamgnt", "adam.lr": "3e-4", "adam.beta2": "0.99"})
    group = run.optimizer.param_groups[0]
    assert type(run.optimizer) is AdamGnT
    assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.9, 0.99), 1e-8)
    assert type(engine("cbp+adam", {}).optimizer).__name__ == "DeviceAdam"  # the default is unchanged
    assert type(engine("cbp", {}).optimizer).__name__ == "DeviceSGD"


@pytest.mark.parametrize("method, prefix", [("cbp", ""), ("cbp+adam", "cbp.")])
def test_adamgnt_step_is_capturable(method, prefix):
    run = engine(method, {prefix + k: v for k, v in ACTIVE.items()})
    assert check_step(run, n_steps=8) == []


def test_upgd_refuses_to_drop_adamgnt():
    with pytest.raises(HyperparameterError, match="upgd replaces the optimizer.*'adamgnt'"):
        engine("cbp+upgd", {"cbp.optimizer": "adamgnt"})


def invoke(tmp_path, method: str, setting: str):
    return CliRunner().invoke(app, ["run", "--method", method, "--task", "scr", "--protocol", "smoke",
                                    "--device", "cpu", "--seeds", "0", "--out", str(tmp_path / "runs"),
                                    "--set", setting], env={"COLUMNS": "250"})


@pytest.mark.parametrize("method", ["cbp", "cbp+adam"])
def test_cli_runs_cbp_with_adamgnt(tmp_path, monkeypatch, method):
    monkeypatch.setitem(SCR.protocols, "smoke", tiny(n_tasks=2, steps=10))
    result = invoke(tmp_path, method, "cbp.optimizer=adamgnt")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "scr" / "smoke").iterdir()
    key = "optimizer" if method == "cbp" else "cbp.optimizer"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["hparams"][key] == "adamgnt"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    assert all(s["steps"].shape == s["exp_avg"].shape for s in state.values())  # a step count per element


def test_cli_refuses_an_unknown_optimizer_in_one_line(tmp_path):
    result = invoke(tmp_path, "cbp+adam", "cbp.optimizer=adam")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == "Error: cbp.optimizer must be one of default, adamgnt, got 'adam'"
    assert not (tmp_path / "runs").exists()
