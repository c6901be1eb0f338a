"""Members (issue 12): grid points of a method trained as one batched model equal their own runs.

For every registered method that declares ``vectorizable`` hyperparameters, and every such key: one
engine over two configurations (seeds [0, 1] each, so seeds [0, 1, 0, 1]) against two engines, one
per configuration, on a tiny ``scr`` stream; then the pieces: ``member_hparams``, the optimizers
with per-member settings, the fused SGD update, a checkpoint round trip and the capturable step.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from plastibench import rng
from plastibench.checks import check_step
from plastibench.compose import compose
from plastibench.engine import Engine
from plastibench.members import member_hparams, per_member
from plastibench.method import Method
from plastibench.nn import BatchedLinear
from plastibench.optim import AdamGnT, DeviceAdam, DeviceSGD
from plastibench.registry import METHODS, TASKS
from plastibench.results import run_config

CPU = torch.device("cpu")
SEEDS = [0, 1]
PROTOCOL = dataclasses.replace(TASKS.get("scr").protocol("smoke"), n_tasks=2, steps_per_task=100)

# Settings under which a method acts within the tiny stream (as tests/test_conformance.py's ACTIVE).
ACTIVE = {"cbp": {"replacement_rate": 0.01}, "redo": {"period": 10, "threshold": 0.5},
          "parseval": {"target": "fixed"}}
# A second value where the rule of ``other_value`` gives none that acts.
OTHER = {("l2", "lr"): 0.02,  # 0 means the protocol's rate; doubling it is 0 again
         ("wclip", "zeta"): 1.0,  # ζ = 6 would never clip the tiny net
         ("cbp", "replacement_rate"): 0.5}  # bounds K of 1 and 2 units a step: members draw for the larger
# Methods whose seeds are not bit-identical across batch sizes even without members: CPU kernels of
# pow and sigmoid round differently in vector lanes and in the scalar tail (UPGD; AdamGnT's
# per-element 1 − β2^t), by < 2e-7 here. Compared to that rounding; every other method bit for bit.
ROUNDING = {"upgd": 1e-6, "cbp+adam": 1e-6}
COMPOSITIONS = {"cbp+l2": {"cbp.replacement_rate": 0.01},
                "cbp+adam": {"cbp.replacement_rate": 0.01, "cbp.optimizer": "adamgnt"}}


def other_value(cls: type[Method], key: str, value):
    """A second valid value: ``OTHER``'s, else 2·value (an int: value + 5), else halfway from value
    to the upper bound. A key the rule cannot serve fails here: add it to ``OTHER``."""
    part, _, short = key.rpartition(".")  # a composition's PART.KEY takes the part's entry
    if (part or cls.name, short) in OTHER:
        return OTHER[part or cls.name, short]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{cls.name}.{key}: add it to OTHER"
    other = value + 5 if isinstance(value, int) else value * 2
    bound = cls.bounds.get(key)
    if bound is not None and other not in bound:
        other = (value + bound.high) / 2
    assert other != value, f"{cls.name}.{key}={value!r}: the rule gives no other value; add one to OTHER"
    return other


def configs(name: str, keys) -> tuple[type[Method], dict, dict]:
    """The method, its tiny-stream configuration a, and b: a with every key of ``keys`` changed."""
    cls = METHODS.get(name)
    active = {**ACTIVE.get(name, {}), **COMPOSITIONS.get(name, {})}
    hp_a = cls.hparams_for("scr", active)
    hp_b = cls.hparams_for("scr", {**active, **{k: other_value(cls, k, hp_a[k]) for k in keys}})
    return cls, hp_a, hp_b


def engine(cls: type[Method], hparams: dict, seeds: list[int], directory: Path) -> Engine:
    plain = {k: v.tolist() if torch.is_tensor(v) else v for k, v in hparams.items()}
    return Engine(cls, hparams, TASKS.get("scr"), PROTOCOL, seeds, device=CPU, directory=directory,
                  config=run_config(cls.name, plain, PROTOCOL, seeds))


def trained(cls: type[Method], hparams: dict, seeds: list[int], directory: Path) -> Engine:
    e = engine(cls, hparams, seeds, directory)
    e.run()
    return e


def _tensors(value, path: str, n: int):
    """(path, tensor) for every tensor with a leading member axis of length ``n`` in nested state."""
    if torch.is_tensor(value):
        if value.dim() and value.shape[0] == n:
            yield path, value
    elif isinstance(value, dict):
        for key, v in value.items():
            yield from _tensors(v, f"{path}/{key}", n)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{path}/{i}", n)


def state(e: Engine, rows: slice) -> dict[str, np.ndarray]:
    """For the members ``rows``: every record of every task, and every tensor of the final network,
    of the method's state and of the optimizer's."""
    out = {f"task{t}/{name}": values[rows] for t, record in enumerate(e.records) for name, values in record.items()}
    n = len(e.seeds)
    optimizer = {k: v for k, v in e.optimizer.state_dict().items() if k != "param_groups"}  # the settings differ
    saved = {"net": e.net.state_dict(), "method": e.method.state_dict(), "optimizer": optimizer}
    out.update({path: t[rows].numpy() for path, t in _tensors(saved, "", n)})
    return out


def assert_same(a: dict, b: dict, rtol: float | None, where: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if rtol is None:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{where}: {name}")
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=rtol, err_msg=f"{where}: {name}")


def assert_members_are_their_own_runs(name: str, keys, tmp_path: Path, alone_a: Engine | None = None) -> None:
    cls, hp_a, hp_b = configs(name, keys)
    hp = member_hparams([hp_a, hp_b], len(SEEDS), cls.vectorizable, CPU)
    assert all(torch.is_tensor(hp[k]) for k in keys)
    together = trained(cls, hp, SEEDS + SEEDS, tmp_path / "together")
    alone_a = alone_a or trained(cls, hp_a, SEEDS, tmp_path / "a")
    alone_b = trained(cls, hp_b, SEEDS, tmp_path / "b")
    n, rtol = len(SEEDS), ROUNDING.get(name)
    assert_same(state(together, slice(0, n)), state(alone_a, slice(None)), rtol, "configuration a")
    assert_same(state(together, slice(n, 2 * n)), state(alone_b, slice(None)), rtol, "configuration b")
    # the value matters: the two configurations of the same seeds trained differently
    a, b = state(together, slice(0, n)), state(together, slice(n, 2 * n))
    assert any(not np.array_equal(a[k], b[k], equal_nan=True) for k in a), f"{keys} changed nothing"


VECTORIZED = sorted((name, key) for name in METHODS.names() for key in METHODS.get(name).vectorizable)


@pytest.fixture(scope="module")
def alone_a(tmp_path_factory):
    """Configuration a of each method run alone, once per module."""
    cache: dict[str, Engine] = {}

    def get(name: str) -> Engine:
        if name not in cache:
            cls, hp_a, _ = configs(name, ())
            cache[name] = trained(cls, hp_a, SEEDS, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name, key", [pytest.param(n, k, id=f"{n}-{k}") for n, k in VECTORIZED])
def test_each_member_equals_its_configuration_run_alone(tmp_path, alone_a, name, key):
    assert_members_are_their_own_runs(name, [key], tmp_path, alone_a(name))


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_a_composition_varies_its_parts_keys_as_members(tmp_path, name):
    """Every key at once; ``cbp+adam`` runs AdamGnT with adam's per-member lr, betas and ε."""
    assert_members_are_their_own_runs(name, sorted(METHODS.get(name).vectorizable), tmp_path)


@pytest.mark.parametrize("name", sorted({n for n, _ in VECTORIZED} | set(COMPOSITIONS)))
def test_a_member_step_is_capturable(tmp_path, name):
    cls, hp_a, hp_b = configs(name, sorted(METHODS.get(name).vectorizable))
    e = engine(cls, member_hparams([hp_a, hp_b], 2, cls.vectorizable, CPU), SEEDS + SEEDS, tmp_path)
    assert check_step(e, n_steps=12) == []


def test_a_member_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Interrupted mid-task and resumed from its checkpoint (per-member optimizer settings included),
    a member run ends where the uninterrupted one does."""
    cls, hp_a, hp_b = configs("adam", ["lr", "beta1"])
    hp = member_hparams([hp_a, hp_b], 2, cls.vectorizable, CPU)
    whole = trained(cls, hp, SEEDS + SEEDS, tmp_path / "whole")
    original, steps = Engine.train_step, {"n": 0}

    def step(self):
        steps["n"] += 1
        if steps["n"] == PROTOCOL.steps_per_task + 37:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Engine, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        trained(cls, hp, SEEDS + SEEDS, tmp_path / "resumed")
    resumed = engine(cls, hp, SEEDS + SEEDS, tmp_path / "resumed")
    assert resumed.resume() and resumed.task_index == 1
    resumed.run()
    assert_same(state(resumed, slice(None)), state(whole, slice(None)), None, "resumed")


def test_methods_declare_only_numeric_hyperparameters_they_have():
    for name in METHODS.names():
        cls = METHODS.get(name)
        for key in cls.vectorizable:
            value = cls.hparams_for("scr")[key]
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name}.{key}"
            assert key not in cls.choices, f"{name}.{key}"
    assert compose("cbp+l2").vectorizable == {"cbp.replacement_rate", "cbp.decay_rate", "cbp.maturity_threshold",
                                              "l2.weight_decay", "l2.lr"}


# ----- member_hparams -----

def test_member_hparams_keeps_equal_values_and_repeats_differing_ones_per_seed():
    hp = member_hparams([{"a": 0.5, "m": 10, "c": "x"}, {"a": 0.25, "m": 12, "c": "x"}, {"a": 1.0, "m": 12, "c": "x"}],
                        2, {"a", "m"}, CPU)
    assert hp["c"] == "x"
    assert hp["a"].dtype == torch.float64 and hp["a"].tolist() == [0.5, 0.5, 0.25, 0.25, 1.0, 1.0]
    assert hp["m"].dtype == torch.int64 and hp["m"].tolist() == [10, 10, 12, 12, 12, 12]
    same = member_hparams([{"a": 0.5, "m": 3}, {"a": 0.5, "m": 3}], 4, {"a"}, CPU)
    assert same == {"a": 0.5, "m": 3}


def test_member_hparams_refuses_what_cannot_vary_within_one_model():
    with pytest.raises(ValueError, match="count_rule cannot vary"):
        member_hparams([{"count_rule": "layer"}, {"count_rule": "bernoulli"}], 2, {"count_rule"}, CPU)
    with pytest.raises(ValueError, match="period cannot vary"):
        member_hparams([{"period": 10, "lam": 1.0}, {"period": 20, "lam": 1.0}], 2, {"lam"}, CPU)
    with pytest.raises(ValueError, match="same hyperparameters"):
        member_hparams([{"lam": 1.0}, {"lam": 1.0, "period": 2}], 2, {"lam"}, CPU)


def test_an_engine_refuses_a_per_member_value_the_method_does_not_declare(tmp_path):
    cls = METHODS.get("redo")
    hp = cls.hparams_for("scr")
    with pytest.raises(ValueError, match="period cannot vary"):
        engine(cls, {**hp, "period": torch.tensor([10, 10, 20, 20])}, SEEDS + SEEDS, tmp_path)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        engine(cls, {**hp, "threshold": torch.tensor([0.1, 0.2])}, SEEDS + SEEDS, tmp_path)


# ----- the optimizers, the fused update, checkpoints -----

def _params(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, 3, generator=g), torch.randn(n, 5, generator=g), torch.randn(n, 2, 3, 3, 3, generator=g)]


def _train(optimizer_cls, params, steps: int = 6, **settings) -> list[torch.Tensor]:
    params = [p.clone().requires_grad_() for p in params]
    opt = optimizer_cls(params, **settings)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = torch.sin(p.detach() * (t + 1) + i)  # a deterministic, parameter-dependent gradient
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("optimizer_cls, a, b", [
    (DeviceSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01), dict(lr=0.03, momentum=0.0, weight_decay=0.0)),
    (DeviceAdam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
     dict(lr=3e-3, betas=(0.99, 0.99), eps=1e-6, weight_decay=0.0)),
    (AdamGnT, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
     dict(lr=3e-3, betas=(0.99, 0.99), eps=1e-6, weight_decay=0.0)),
])
def test_an_optimizer_applies_each_members_settings_bit_for_bit(optimizer_cls, a, b):
    def member(x, y):  # configurations a and b, two seeds each
        return x if x == y else torch.tensor([x, x, y, y], dtype=torch.float64)

    settings = {k: tuple(map(member, a[k], b[k])) if isinstance(a[k], tuple) else member(a[k], b[k]) for k in a}
    params = _params(4)
    together = _train(optimizer_cls, params, **settings)
    for c, alone in enumerate((a, b)):
        mine = _train(optimizer_cls, [p[2 * c:2 * c + 2] for p in params], **alone)
        for x, y in zip(together, mine):
            assert torch.equal(x[2 * c:2 * c + 2], y), f"configuration {c}"


def test_a_loaded_checkpoint_writes_the_per_member_settings_in_place():
    params = [p.requires_grad_() for p in _params(4)]
    lr = torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    opt = DeviceAdam(params, lr=lr, betas=(torch.tensor([0.9, 0.9, 0.8, 0.8], dtype=torch.float64), 0.999))
    group = opt.param_groups[0]
    live_lr, live_beta1 = group["lr"], group["betas"][0]
    assert live_lr is not lr and torch.equal(live_lr, lr)  # the optimizer's own copy
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = lr * 2  # as loaded from disk: other tensors, maybe another device
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] is live_lr and torch.equal(live_lr, lr * 2)
    assert opt.param_groups[0]["betas"][0] is live_beta1


def test_the_fused_sgd_update_takes_a_per_member_rate():
    """``BatchedLinear``'s in-backward SGD with lr ``[S]`` matches the optimizer's per-member update to
    rounding (bias bit for bit), and a member's own fused run."""
    lr = torch.tensor([0.1, 0.1, 0.02, 0.02], dtype=torch.float64)
    x = torch.randn(4, 3, 128)

    def step(layer_lr, rows, fused):
        layer = BatchedLinear(len(range(4)[rows]), 128, 128)
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-1, 1, 4 * 128 * 128).view(4, 128, 128)[rows])
            layer.bias.copy_(torch.linspace(-1, 1, 4 * 128).view(4, 128)[rows])
        opt = DeviceSGD(list(layer.parameters()), lr=layer_lr)
        assert layer.fuse_sgd(opt.param_groups[0] if fused else None) == fused
        layer(x[rows]).square().sum().backward()
        opt.step()
        return layer.weight.detach(), layer.bias.detach()

    fused, plain = step(lr, slice(None), True), step(lr, slice(None), False)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(fused[1], plain[1])
    for rows, rate in ((slice(0, 2), 0.1), (slice(2, 4), 0.02)):
        alone = step(rate, rows, True)
        torch.testing.assert_close(fused[0][rows], alone[0], rtol=1e-6, atol=1e-6)
        assert torch.equal(fused[1][rows], alone[1])


def test_the_icifar100_schedule_follows_each_members_rate():
    task = TASKS.get("icifar100").__new__(TASKS.get("icifar100"))
    task.protocol = TASKS.get("icifar100").protocol("smoke")
    lr = torch.tensor([0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    optimizer = types.SimpleNamespace(param_groups=[{"lr": lr}])
    late = max(task.protocol.settings["lr_milestones"])
    task._set_lr(optimizer, late)
    assert optimizer.param_groups[0]["lr"] is lr  # in place: a captured step reads it
    assert lr.tolist() == [task._lr(late, 0.1)] * 2 + [task._lr(late, 0.05)] * 2
    task._set_lr(optimizer, 0)
    assert lr.tolist() == [0.1, 0.1, 0.05, 0.05]


def test_a_larger_draw_begins_with_the_smaller_one():
    """CBP's members draw (K, fan_in) for the largest K: a member's first rows are its own draw."""
    seeds = torch.tensor([0, 1, 0, 1])
    for draw in (rng.uniform, rng.normal):
        assert torch.equal(draw(seeds, 7, "cbp/layer0/init", (3, 5))[:, :2], draw(seeds, 7, "cbp/layer0/init", (2, 5)))


def test_per_member_casts_and_views_a_tensor_and_leaves_a_number():
    like = torch.zeros(4, 3, 2)
    assert per_member(0.5, like) == 0.5
    value = per_member(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), like)
    assert value.shape == (4, 1, 1) and value.dtype == torch.float32
    assert value.flatten().tolist() == torch.tensor([0.1, 0.2, 0.3, 0.4]).tolist()  # rounded as a float32 scalar
