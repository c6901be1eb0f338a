"""The engine and the task streams: seed batching, resume, caching, determinism, task definitions, rng."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plastibench import engine as engine_mod
from plastibench import rng, runner
from plastibench.errors import RunFileError
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import METHODS, TASKS
from plastibench.results import load_checkpoint, read_metrics, read_yaml, run_config
from plastibench.runner import execute, plan

CPU = torch.device("cpu")

# Overrides that make CBP actually replace units within a smoke run (its paper rates replace
# about one unit in a whole smoke run, which would leave its generate-and-test state untested).
CBP_ACTIVE = {"scr": {"replacement_rate": "0.01"}, "pmnist": {"replacement_rate": "0.001"}}

# What the runs here check (seed batching, resume, caching, determinism) does not depend on the
# stream's length: for the tests that use ``short_smoke``, scr's and pmnist's smoke protocols are cut
# to 3 tasks of 100 steps (CBP_ACTIVE still replaces units from step 11 on scr, 101 on pmnist).
SHORT_SMOKE = {"n_tasks": 3, "steps_per_task": 100}


@pytest.fixture
def short_smoke(monkeypatch):
    for name in ("scr", "pmnist"):
        task = TASKS.get(name)
        monkeypatch.setitem(task.protocols, "smoke", dataclasses.replace(task.protocol("smoke"), **SHORT_SMOKE))


def run(method: str, task: str, seeds: str, out: Path, overrides=None, data_dir=None, **kwargs):
    """Plan and execute one smoke run; returns (plan, summary)."""
    p = plan(method, task, "smoke", seeds, dict(overrides or {}), out)
    verify = data_dir is None
    return p, execute(p, device=CPU, data_dir=data_dir, verify=verify, **kwargs)


def seed_series(directory: Path, seed: int) -> dict[str, list[float]]:
    return {name: series[seed] for name, series in read_metrics(directory / "metrics.csv").items()}


def final_net(directory: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(directory / "checkpoint.pt")["net"]


# --------------------------------------------------------------------------------------------
# Seeds batched together == seeds run alone
# --------------------------------------------------------------------------------------------

def assert_seed_matches(together: Path, alone: Path, seed: int, other_seed: int) -> None:
    a, b = seed_series(together, seed), seed_series(alone, seed)
    assert sorted(a) == sorted(b) and len(a) > 3
    for name in a:
        assert len(a[name]) == len(b[name])
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The comparison has teeth: another seed of the same batch is not the same stream.
    metric = [n for n in a if "/" not in n and n != "weight_magnitude"][0]
    assert seed_series(together, other_seed)[metric] != a[metric]


@pytest.mark.usefixtures("short_smoke")
@pytest.mark.parametrize("method", ["bp", "l2", "snp", "cbp"])
def test_scr_batched_seeds_equal_separate_seeds(tmp_path, method):
    overrides = CBP_ACTIVE["scr"] if method == "cbp" else {}
    p3, s3 = run(method, "scr", "0-2", tmp_path, overrides)
    p1, s1 = run(method, "scr", "2", tmp_path, overrides)
    assert p3.directory != p1.directory
    assert_seed_matches(p3.directory, p1.directory, seed=2, other_seed=0)
    assert s3["per_seed"][2] == pytest.approx(s1["per_seed"][2], rel=1e-6)
    for name, d in s1["final_diagnostics"].items():
        assert s3["final_diagnostics"][name]["per_seed"][2] == pytest.approx(d["per_seed"][2], rel=1e-5, abs=1e-6)


@pytest.mark.usefixtures("short_smoke")
@pytest.mark.parametrize("method", ["bp", "cbp"])
def test_pmnist_batched_seeds_equal_separate_seeds(tmp_path, tiny_mnist, method):
    overrides = CBP_ACTIVE["pmnist"] if method == "cbp" else {}
    p3, s3 = run(method, "pmnist", "0-2", tmp_path / "runs", overrides, data_dir=tiny_mnist)
    p1, s1 = run(method, "pmnist", "2", tmp_path / "runs", overrides, data_dir=tiny_mnist)
    assert_seed_matches(p3.directory, p1.directory, seed=2, other_seed=0)
    assert s3["per_seed"][2] == pytest.approx(s1["per_seed"][2], rel=1e-6)


# --------------------------------------------------------------------------------------------
# Resume == uninterrupted, bit for bit
# --------------------------------------------------------------------------------------------

RESUME_SEEDS = "0-1"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Uninterrupted reference runs of CBP (default checkpointing), computed once per task."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("uninterrupted")

    def get(task: str, data_dir=None) -> Path:
        if task not in cache:
            p, _ = run("cbp", task, RESUME_SEEDS, root / task, CBP_ACTIVE[task], data_dir=data_dir)
            cache[task] = p.directory
        return cache[task]

    return get


def assert_same_run(a: Path, b: Path) -> None:
    """Two finished run directories hold exactly the same numbers and final state."""
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    sa, sb = read_yaml(a / "summary.yaml"), read_yaml(b / "summary.yaml")
    assert sa["per_seed"] == sb["per_seed"]
    assert sa["mean"] == sb["mean"] and sa["ci95"] == sb["ci95"]
    assert sa["final_diagnostics"] == sb["final_diagnostics"]
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["net"].keys() == cb["net"].keys()
    for key in ca["net"]:
        assert torch.equal(ca["net"][key], cb["net"][key]), key
    for la, lb in zip(ca["method"]["layers"], cb["method"]["layers"]):
        for key in la:
            assert torch.equal(la[key], lb[key]), key


@pytest.fixture
def count_steps(monkeypatch):
    counter = {"n": 0}
    original = engine_mod.Engine.train_step

    def step(self):
        counter["n"] += 1
        return original(self)

    monkeypatch.setattr(engine_mod.Engine, "train_step", step)
    return counter


@pytest.mark.usefixtures("short_smoke")
@pytest.mark.parametrize("task", ["scr", "pmnist"])
@pytest.mark.parametrize("where", ["mid-task", "boundary"])
def test_resume_is_bit_identical(tmp_path, monkeypatch, request, uninterrupted, count_steps, task, where):
    data_dir = request.getfixturevalue("tiny_mnist") if task == "pmnist" else None
    reference = uninterrupted(task, data_dir)
    check_every = 7
    monkeypatch.setattr(engine_mod, "CHECK_EVERY", check_every)
    spt = TASKS.get(task).protocol("smoke").steps_per_task
    total = TASKS.get(task).protocol("smoke").total_steps
    assert spt % check_every != 0
    # mid-task: a progress report inside task 1 (not a boundary); boundary: after task 1 ends.
    stop_at = spt + check_every * 9 if where == "mid-task" else 2 * spt
    assert (stop_at % spt != 0) == (where == "mid-task")

    def interrupt(progress):
        if progress.steps_done == stop_at:
            raise KeyboardInterrupt

    p = plan("cbp", task, "smoke", RESUME_SEEDS, CBP_ACTIVE[task], tmp_path)
    verify = data_dir is None
    count_steps["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        execute(p, device=CPU, data_dir=data_dir, verify=verify, checkpoint_every=0, on_progress=interrupt)
    assert not (p.directory / "summary.yaml").exists()
    saved = load_checkpoint(p.directory / "checkpoint.pt")
    assert saved["task_index"] * spt + saved["step_in_task"] == stop_at
    assert count_steps["n"] == stop_at
    assert len(read_yaml(p.directory / "config.yaml")["seeds"]) == 2

    count_steps["n"] = 0
    summary = execute(p, device=CPU, data_dir=data_dir, verify=verify, checkpoint_every=0)
    assert count_steps["n"] == total - stop_at  # resumed, not restarted
    assert summary == read_yaml(p.directory / "summary.yaml")
    assert_same_run(reference, p.directory)


@pytest.mark.usefixtures("short_smoke")
def test_resume_after_sigint_inside_a_step_is_bit_identical(tmp_path, monkeypatch):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    ref, _ = run("bp", "scr", "0-1", tmp_path / "ref")
    cls = METHODS.get("bp")
    original = cls.after_step
    fired = []

    def after_step(self, info):  # a Ctrl-C arriving after optimizer.step(), before the step ends
        original(self, info)
        if info.step == 150 and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cls, "after_step", after_step)
    p = plan("bp", "scr", "smoke", "0-1", {}, tmp_path / "int")
    with pytest.raises(KeyboardInterrupt):
        execute(p, device=CPU, checkpoint_every=1e9)
    monkeypatch.setattr(cls, "after_step", original)
    execute(p, device=CPU)
    assert (ref.directory / "metrics.csv").read_text() == (p.directory / "metrics.csv").read_text()
    assert all(torch.equal(a, b) for a, b in zip(final_net(ref.directory).values(),
                                                 final_net(p.directory).values()))


@pytest.mark.usefixtures("short_smoke")
def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    p, _ = run("bp", "scr", "0", tmp_path)
    (p.directory / "summary.yaml").unlink()
    other = runner.Plan(p.method, p.hparams, {**p.config, "seeds": [5]}, p.directory)
    with pytest.raises(RunFileError, match="another configuration"):
        execute(other, device=CPU)


# --------------------------------------------------------------------------------------------
# Finished runs are read, not recomputed; the same seed gives the same numbers
# --------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("short_smoke")
def test_finished_run_is_not_recomputed(tmp_path, monkeypatch):
    p, first = run("bp", "scr", "0-1", tmp_path)
    assert first == read_yaml(p.directory / "summary.yaml")

    class NoEngine:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(runner, "Engine", NoEngine)
    again = plan("bp", "scr", "smoke", "0-1", {}, tmp_path)
    assert again.directory == p.directory and again.done
    start = time.perf_counter()
    second = execute(again, device=CPU)
    assert time.perf_counter() - start < 2.0
    assert second == first


@pytest.mark.usefixtures("short_smoke")
def test_same_seed_gives_identical_results(tmp_path, uninterrupted):
    reference = uninterrupted("scr")
    p, _ = run("cbp", "scr", RESUME_SEEDS, tmp_path, CBP_ACTIVE["scr"])
    assert p.directory.name == reference.name
    assert_same_run(reference, p.directory)


# --------------------------------------------------------------------------------------------
# scr: the LTU target and the slow bits
# --------------------------------------------------------------------------------------------

SCR = TASKS.get("scr")
SEEDS3 = torch.tensor([0, 1, 7])


def reference_ltu(x, w1, b1, w2, b2, beta):
    """``lop/nets/fix_ltu_net.py`` restated in numpy for one seed."""
    m = w1.shape[1]
    s = (m - w1.sum(axis=1) + b1) / 2
    tau = beta * (m + 1) - s
    features = (x @ w1.T + b1 > tau).astype(np.float64)
    return features @ w2.T + b2


def scr_task(**settings) -> "SCR":
    smoke = SCR.protocol("smoke")
    proto = dataclasses.replace(smoke, settings={**smoke.settings, **settings}) if settings else smoke
    return SCR(proto, SEEDS3)


def test_scr_target_is_the_reference_ltu_net():
    task = scr_task()
    cfg = task.protocol.settings
    m, h = cfg["n_inputs"], cfg["target_features"]
    assert task.w1.shape == (3, h, m) and task.b1.shape == (3, h)
    assert task.w2.shape == (3, 1, h) and task.b2.shape == (3, 1)
    for t in (task.w1, task.b1, task.w2, task.b2):
        assert set(t.unique().tolist()) <= {-1.0, 1.0}
    assert 0.4 < (task.w1 > 0).float().mean() < 0.6
    task.start_task(0)
    x = task.x.double().numpy()
    assert set(np.unique(x)) == {0.0, 1.0}
    for s in range(3):
        args = [t[s].double().numpy() for t in (task.w1, task.b1, task.w2, task.b2)]
        expected = reference_ltu(x[s], *args, beta=cfg["beta"])
        np.testing.assert_array_equal(task.y[s].double().numpy(), expected)
        np.testing.assert_array_equal(task.target(task.x)[s].double().numpy(), expected)
        assert len(np.unique(expected)) > 3  # the units do switch: not a constant target
    assert not torch.equal(task.w1[0], task.w1[1])  # one target net per seed


def test_scr_batch_is_the_period_stream():
    task = scr_task()
    task.start_task(1)
    x, y = task.batch(1, 17)
    assert x.shape == (3, 1, 20) and y.shape == (3, 1, 1)
    assert torch.equal(x, task.x[:, 17:18]) and torch.equal(y, task.target(x))


def slow_bits_per_period(task, n_periods: int) -> list[torch.Tensor]:
    f = task.protocol.settings["n_slow_bits"]
    out = []
    for period in range(n_periods):
        task.start_task(period)
        slow, fast = task.x[..., :f], task.x[..., f:]
        assert torch.equal(slow, slow[:, :1].expand_as(slow)), "slow bits change within a period"
        assert not torch.equal(fast, fast[:, :1].expand_as(fast)), "fast bits are not fresh"
        assert 0.4 < fast.mean() < 0.6
        out.append(slow[:, 0].clone())
    return out


def test_scr_redraw_variant_redraws_slow_bits_each_period():
    task = scr_task()
    assert task.protocol.settings["variant"] == "redraw"
    bits = slow_bits_per_period(task, 5)
    changed = torch.stack([(a != b).sum(1) for a, b in zip(bits, bits[1:])])  # [periods-1, S]
    assert (changed >= 1).all()
    assert (changed > 1).any()  # a redraw, not a single flip


def test_scr_flip_one_variant_flips_exactly_one_slow_bit():
    task = scr_task(variant="flip-one")
    bits = slow_bits_per_period(task, 6)
    for a, b in zip(bits, bits[1:]):
        assert ((a != b).sum(1) == 1).all()
    flipped = torch.stack([(a != b).float().argmax(1) for a, b in zip(bits, bits[1:])])
    assert len(flipped.unique()) > 1  # not always the same bit
    # Periods can be set up out of order (resume) and give the same bits.
    task.start_task(2)
    assert torch.equal(task.x[:, 0, :15], bits[2])
    assert SCR.protocol("flip-one").settings["variant"] == "flip-one"


@pytest.mark.parametrize("variant", ["redraw", "flip-one"])
def test_scr_probe_varies_the_slow_bits_and_is_a_function_of_seed_and_task(variant):
    task = SCR(SCR.protocol("paper") if variant == "redraw" else SCR.protocol("flip-one"), SEEDS3)
    f = task.protocol.settings["n_slow_bits"]
    probe = task.probe(4)
    assert probe.shape == (3, 1000, 20) and set(probe.unique().tolist()) == {0.0, 1.0}
    for s in range(3):
        rows = probe[s]
        # 1000 draws from 2^20 inputs: (nearly) all distinct, not the 32 of one period's slow bits
        assert len(torch.unique(rows, dim=0)) >= 995
        assert len(torch.unique(rows[:, :f], dim=0)) >= 950  # 2^15 slow patterns: ~15 birthday repeats
        assert 0.4 < rows[:, :f].mean() < 0.6  # each slow bit a fair coin over the probe
        assert (rows[:, :f].std(0) > 0.4).all()
    # not the period's slow bits, and a pure function of (seed, task): the same after other draws
    task.start_task(4)
    assert not torch.equal(probe[..., :f], task.x[:, :1, :f].expand(-1, 1000, -1))
    task.start_task(7)
    assert torch.equal(task.probe(4), probe)
    assert torch.equal(SCR(task.protocol, SEEDS3[1:2]).probe(4)[0], probe[1])  # per seed, not per batch
    assert not torch.equal(task.probe(5), probe)


def test_scr_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        scr_task(variant="flip-two")


# --------------------------------------------------------------------------------------------
# pmnist: composed permutations, one pass per task, inputs in [0, 1], pre-update accuracy
# --------------------------------------------------------------------------------------------

PMNIST = TASKS.get("pmnist")


def is_permutation(rows: torch.Tensor, n: int) -> bool:
    return bool((rows.sort(dim=-1).values == torch.arange(n)).all())


def test_pmnist_permutations_compose_across_tasks(tiny_mnist):
    seeds = torch.tensor([0, 3])
    task = PMNIST(PMNIST.protocol("smoke"), seeds, data_dir=tiny_mnist, verify=False)
    images = task.images.float() / 255.0
    fixed = torch.tensor([[4, 100, 299], [0, 1, 2]])
    previous_x = images[fixed]  # raw pixel order
    previous_pixels = torch.arange(784).expand(2, -1)
    previous_order = torch.arange(300).expand(2, -1)
    for t in range(3):
        task.start_task(t)
        pixels, order = task.pixels.clone(), task.order.clone()
        assert is_permutation(pixels, 784) and is_permutation(order, 300)
        step_pixels = rng.permutation(seeds, t, "pixels", 784)
        step_order = rng.permutation(seeds, t, "order", 300)
        assert torch.equal(pixels, previous_pixels.gather(1, step_pixels))
        assert torch.equal(order, previous_order.gather(1, step_order))
        assert not torch.equal(pixels, previous_pixels)
        # the reference's semantics: task t's images are task t-1's images, pixels permuted again
        x = task.inputs(fixed, task.pixels)
        assert torch.equal(x, previous_x.gather(2, step_pixels.unsqueeze(1).expand(-1, 3, -1)))
        previous_x, previous_pixels, previous_order = x, pixels, order
    # composition has memory: task 2's order is not a fresh permutation of the raw pixels
    assert not torch.equal(previous_pixels, rng.permutation(seeds, 2, "pixels", 784))


def test_pmnist_one_pass_over_all_examples_inputs_in_unit_interval(tiny_mnist):
    seeds = torch.tensor([1, 2])
    proto = dataclasses.replace(PMNIST.protocol("smoke"), steps_per_task=300, n_tasks=2)
    task = PMNIST(proto, seeds, data_dir=tiny_mnist, verify=False)
    raw = task.images.float()
    for t in range(2):
        task.start_task(t)
        seen_labels = []
        xs = []
        for step in range(300):
            x, y = task.batch(t, step)
            assert x.shape == (2, 1, 784) and x.dtype == torch.float32 and y.shape == (2, 1)
            xs.append(x)
            seen_labels.append(y)
        x = torch.cat(xs, 1)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() == 1.0
        # step k shows example order[k], under the task's pixel order: every example once
        expected = raw[task.order].gather(2, task.pixels.unsqueeze(1).expand(-1, 300, -1)) / 255.0
        assert torch.equal(x, expected)
        assert torch.equal(torch.cat(seen_labels, 1), task.labels[task.order])
        assert is_permutation(task.order, 300)
        probe = task.probe(t)
        assert probe.shape == (2, proto.probe_size, 784) and torch.equal(probe, x[:, :proto.probe_size])


def test_pmnist_online_accuracy_uses_the_pre_update_prediction(tmp_path, tiny_mnist):
    lr, spt, n_tasks = 0.05, 100, 2
    proto = dataclasses.replace(PMNIST.protocol("smoke"), n_tasks=n_tasks, steps_per_task=spt,
                                optimizer=OptimizerSpec("sgd", lr=lr))
    seeds = [0, 1]
    eng = engine_mod.Engine(METHODS.get("bp"), {}, PMNIST, proto, seeds, device=CPU, directory=tmp_path,
                            config=run_config("bp", {}, proto, seeds), data_dir=tiny_mnist, verify=False)
    eng.run()
    measured = np.stack([r["online_accuracy"] for r in eng.records])  # [tasks, S]

    # Independent replay: predict, score, then update; and the post-update score for contrast.
    task = PMNIST(proto, torch.tensor(seeds), data_dir=tiny_mnist, verify=False)
    net = task.network()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    pre = np.zeros((n_tasks, 2))
    post = np.zeros((n_tasks, 2))
    for t in range(n_tasks):
        task.start_task(t)
        for step in range(spt):
            x, y = task.batch(t, step)
            out, _ = net(x)
            pre[t] += (out.argmax(-1) == y).double().mean(1).numpy()
            opt.zero_grad()
            task.loss(out, y).sum().backward()
            opt.step()
            with torch.no_grad():
                post[t] += (net(x)[0].argmax(-1) == y).double().mean(1).numpy()
    pre, post = pre / spt, post / spt
    np.testing.assert_allclose(measured, pre, rtol=0, atol=1e-12)
    assert np.abs(post - pre).max() > 0.05  # the two readings are distinguishable here


# --------------------------------------------------------------------------------------------
# Protocol hashes
# --------------------------------------------------------------------------------------------

PINNED_HASHES = {
    ("ant", "paper"): "e8f3cd8fd3da25a6",
    ("ant", "short"): "212b81d60676027c",
    ("ant", "smoke"): "3cc539cac7e6c61b",
    ("cifar5p1", "paper"): "99f4e09c483469d7",
    ("cifar5p1", "short"): "443740de8fc7fb67",
    ("cifar5p1", "smoke"): "da6c9836eb322d39",
    ("cimagenet", "paper"): "69789a787b91a92f",
    ("cimagenet", "paper-archive"): "06eb5f97576cf0cb",
    ("cimagenet", "short"): "0a277f84e2c68cae",
    ("cimagenet", "short-archive"): "8ee64334a48627ff",
    ("cimagenet", "smoke"): "9b9360987bd69a5a",
    ("icifar100", "paper"): "904ca25228f3a279",
    ("icifar100", "short"): "381c0ce3f56acd93",
    ("icifar100", "smoke"): "aab3f944248c9a55",
    ("ipmnist", "paper"): "aa8c61adbf68ea21",
    ("ipmnist", "short"): "f3516327206aa771",
    ("ipmnist", "smoke"): "32d44a6b924869db",
    ("lpcifar10", "paper"): "74bd2db8caea70fe",
    ("lpcifar10", "short"): "9bd425dccf67d83b",
    ("lpcifar10", "smoke"): "89512fd2db4fb006",
    ("lpemnist", "paper"): "f62d2d77ccf4493c",
    ("lpemnist", "short"): "e870dfafafdd5484",
    ("lpemnist", "smoke"): "cdae6e834aaddb13",
    ("lpmnist", "paper"): "50300ab30ed9d0c4",
    ("lpmnist", "short"): "6885d2c35060864e",
    ("lpmnist", "smoke"): "4bcd990b4d5b7ac7",
    ("pmnist", "paper"): "eb8d048359733eb5",
    ("pmnist", "short"): "1d8b72584863380d",
    ("pmnist", "smoke"): "ffbbf376f72c8615",
    ("rlmnist", "paper"): "94ab340996d20585",
    ("rlmnist", "short"): "9d0ab48ae5096f94",
    ("rlmnist", "smoke"): "22ef585f33fb2cfa",
    ("scr", "paper"): "2821251a1f8c1646",
    ("scr", "flip-one"): "c2f0159d8f9a3a3e",
    ("scr", "short"): "e48d9878e66f20ab",
    ("scr", "smoke"): "10abdee9e44b8f9a",
    ("sant", "paper"): "e8ca36f7f0dbb3ee",
    ("sant", "short"): "4d7db5d947e66991",
    ("sant", "smoke"): "eb8b716b68a4f9cf",
    ("warmstart", "paper"): "762ac7c1552f143d",
    ("warmstart", "short"): "a827aafc5670897a",
    ("warmstart", "smoke"): "e56b8821410b36d8",
}


def all_protocols() -> dict[tuple[str, str], Protocol]:
    return {(t, name): p for t in TASKS.names() for name, p in TASKS.get(t).protocols.items()}


def test_protocol_hashes_are_pinned():
    found = {key: p.hash for key, p in all_protocols().items()}
    assert found == PINNED_HASHES, ("a protocol changed: if intended, bump its version and update the "
                                    "pinned hashes")
    for (task, name), p in all_protocols().items():
        assert p.task == task and p.name == name


def changed_values(p: Protocol) -> dict[str, list]:
    """For every field that enters the hash, one or more modified values."""
    out = {}
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        if f.name == "settings":
            key = sorted(v)[0]
            out[f.name] = [{**v, "extra": 1}, {**v, key: str(v[key]) + "x"},
                           {k: x for k, x in v.items() if k != key}]
        elif f.name == "optimizer":
            out[f.name] = [dataclasses.replace(v, name="sgd" if v.name == "adam" else "adam"), dataclasses.replace(v, lr=v.lr * 2),
                           dataclasses.replace(v, momentum=v.momentum / 2 + 0.25),
                           dataclasses.replace(v, weight_decay=v.weight_decay * 2 + 1e-4),
                           dataclasses.replace(v, betas=(0.8, 0.999)), dataclasses.replace(v, eps=1e-6)]
        elif isinstance(v, bool):
            out[f.name] = [not v]
        elif isinstance(v, int):
            out[f.name] = [v + 1]
        elif isinstance(v, float):
            out[f.name] = [v / 2]
        elif isinstance(v, str):
            out[f.name] = [v + "x"]
        else:
            raise AssertionError(f"no test value for field {f.name}")
    return out


@pytest.mark.parametrize("key", sorted(PINNED_HASHES))
def test_protocol_hash_covers_every_field_but_the_prose(key):
    p = all_protocols()[key]
    prose = {"description", "default_seeds"}
    assert prose < {f.name for f in dataclasses.fields(p)}
    for name, values in changed_values(p).items():
        for value in values:
            changed = dataclasses.replace(p, **{name: value})
            if name in prose:
                assert changed.hash == p.hash, name
            else:
                assert changed.hash != p.hash, (name, value)
    # settings order does not matter; hash is a pure function of the content
    shuffled = dataclasses.replace(p, settings=dict(reversed(list(p.settings.items()))))
    assert shuffled.hash == p.hash and len(p.hash) == 16


# --------------------------------------------------------------------------------------------
# Counter-based rng
# --------------------------------------------------------------------------------------------

DRAWS = {
    "hash32": lambda s: rng.hash32(s, 12, "p", (5, 3)),
    "uniform": lambda s: rng.uniform(s, 12, "p", (7,), -2.0, 3.0),
    "normal": lambda s: rng.normal(s, 2**33 + 5, "p", (7,)),
    "permutation": lambda s: rng.permutation(s, 3, "p", 50),
    "bits": lambda s: rng.bits(s, 0, "p", (9,)),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_rng_seed_draws_do_not_depend_on_other_seeds(name):
    draw = DRAWS[name]
    batch = torch.tensor([3, 0, 11, 2**40 + 1])
    together = draw(batch)
    assert together.shape[0] == 4
    for i, seed in enumerate(batch.tolist()):
        alone = draw(torch.tensor([seed]))
        assert torch.equal(together[i], alone[0])
        assert torch.equal(draw(torch.tensor([seed, 99, 5]))[0], alone[0])
    assert not torch.equal(together[0], together[1])


def test_rng_keys_separate_streams():
    s = torch.tensor([0])
    base = rng.uniform(s, 5, "a", (64,))
    assert torch.equal(base, rng.uniform(s, 5, "a", (64,)))
    assert not torch.equal(base, rng.uniform(s, 6, "a", (64,)))
    assert not torch.equal(base, rng.uniform(s, 5, "b", (64,)))
    assert not torch.equal(base, rng.uniform(torch.tensor([1]), 5, "a", (64,)))
    assert not torch.equal(base, rng.uniform(s, 5 + 2**32, "a", (64,)))  # high bits of the step count


def test_rng_uniform_range_and_mean():
    u = rng.uniform(torch.arange(4), 1, "u", (50_000,))
    assert u.dtype == torch.float32 and u.shape == (4, 50_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.double().mean().item() - 0.5) < 0.005
    assert abs(u.double().var().item() - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01
    v = rng.uniform(torch.arange(2), 1, "u", (10_000,), -3.0, -1.0)
    assert v.min() >= -3.0 and v.max() < -1.0


def test_rng_normal_moments():
    z = rng.normal(torch.arange(2), 0, "n", (50_000,), std=2.0).double()
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 2.0) < 0.05


def test_rng_permutation_returns_permutations():
    seeds = torch.arange(6)
    for n in (1, 2, 10, 784):
        perm = rng.permutation(seeds, 0, "perm", n)
        assert perm.shape == (6, n) and perm.dtype == torch.int64
        assert is_permutation(perm, n)
    perm = rng.permutation(seeds, 0, "perm", 784)
    assert len({tuple(r) for r in perm.tolist()}) == 6
    # roughly uniform: the first position is spread over the range
    first = rng.permutation(torch.arange(2000), 0, "perm", 10)[:, 0]
    counts = torch.bincount(first, minlength=10).double() / 2000
    assert (counts - 0.1).abs().max() < 0.04


def test_rng_bits_are_fair():
    b = rng.bits(torch.arange(3), 4, "b", (20_000,))
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert abs(b.mean().item() - 0.5) < 0.01


def test_rng_block_serves_the_per_step_draws():
    seeds = torch.tensor([4, 1, 9])
    block = rng.Block(seeds, "blk", (3, 2), low=-1.0, high=1.0, length=8)
    for step in [0, 1, 7, 8, 3, 100, 99, 2**33]:  # in-block, refills, going backwards
        expected = rng.uniform(seeds, step, "blk", (3, 2), -1.0, 1.0)
        assert torch.equal(block.at(step), expected)
        alone = rng.Block(seeds[1:2], "blk", (3, 2), low=-1.0, high=1.0).at(step)
        assert torch.equal(alone[0], expected[1])  # independent of the other seeds and of the length
    bits = rng.Block(seeds, "b", (5,), draw=rng.bits, length=4)
    assert torch.equal(bits.at(6), rng.bits(seeds, 6, "b", (5,)))


def test_rng_block_draws_what_segments_read_doubling_up_to_its_length():
    """A first segment of n steps from ``first`` draws the n + 1 steps ``[first, first + n]``; a refill
    draws the larger of its segment and twice the previous draw, up to the buffer's length. A short
    run so draws at most twice what it reads (not 512 steps of noise per block), a long one refills
    about once per buffer; beyond what was drawn the buffer reads NaN."""
    seeds, drawn = torch.tensor([4, 1]), []

    def draw(seeds, steps, purpose, shape):
        drawn.append(steps.tolist())
        return rng.uniform(seeds, steps, purpose, shape)

    block = rng.Block(seeds, "seg", (3,), draw=draw, length=64)
    block.prepare(10, 4)
    block.prepare(11, 3)  # covered: no new draw
    assert drawn == [list(range(10, 15))] and block.at(torch.tensor(15)).isnan().all()
    for step in range(10, 15):
        assert torch.equal(block.at(torch.tensor(step)), rng.uniform(seeds, step, "seg", (3,)))
    block.prepare(20, 1)
    block.prepare(100, 30)
    block.prepare(200, 2)
    block.prepare(300, 2)
    assert [(d[0], len(d)) for d in drawn[1:]] == [(20, 10), (100, 31), (200, 62), (300, 64)]
    assert torch.equal(block.at(torch.tensor(363)), rng.uniform(seeds, 363, "seg", (3,)))
