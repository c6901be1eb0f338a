"""The reference-style loop baseline trains the same thing as the engine, one plain model per seed."""

from __future__ import annotations

import pytest
import torch

from plastibench.engine import Engine
from plastibench.loop_baseline import LoopBaseline, LoopMLP, loop_seed_steps_per_second
from plastibench.registry import METHODS, TASKS

CPU = torch.device("cpu")
DATA_FIXTURES = {"pmnist": "tiny_mnist", "cimagenet": "tiny_imagenet32", "icifar100": "tiny_cifar100"}
TASK_NAMES = ["scr", "pmnist", "cimagenet", "icifar100"]
N_SEEDS = 2


def data_root(request, task):
    return request.getfixturevalue(DATA_FIXTURES[task]) if task in DATA_FIXTURES else None


def loop_for(method, task, request, n_seeds=N_SEEDS, **kwargs):
    root = data_root(request, task)
    return LoopBaseline(method, task, "smoke", n_seeds, device=CPU, data_dir=root, verify=root is None, **kwargs)


def seed_state(net, model, s):
    """Pairs (name, batched seed-s slice, plain tensor) over every parameter and BN statistic."""
    plain = model.state_dict()
    for key, value in net.state_dict().items():
        name = key
        if isinstance(model, LoopMLP):
            _, i, kind = key.split(".")
            name = f"layers.{2 * int(i)}.{kind}"
        yield key, value[s], plain[name]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_plain_models_start_as_the_batched_net_and_compute_the_same(task, request):
    loop = loop_for("bp", task, request)
    net = loop.task.network()  # drawn from the same seeds: the net the loop copied
    assert len(loop.models) == N_SEEDS
    for s, model in enumerate(loop.models):
        n_params = 0
        for key, batched, plain in seed_state(net, model, s):
            assert torch.equal(batched, plain), key
            n_params += 1
        assert n_params == len(net.state_dict())
    x, _ = loop._batch(0)
    with torch.no_grad():  # train mode: BatchNorm uses each seed's batch statistics on both sides
        out, _ = net(x)
    for s, model in enumerate(loop.models):
        with torch.no_grad():
            plain_out, _ = model(x[s])
        torch.testing.assert_close(plain_out, out[s], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["scr", "pmnist"])
def test_bp_steps_match_the_engine(task, request, tmp_path):
    root = data_root(request, task)
    proto = TASKS.get(task).protocol("smoke")
    engine = Engine(METHODS.get("bp"), {}, TASKS.get(task), proto, list(range(N_SEEDS)), device=CPU,
                    directory=tmp_path, config={}, data_dir=root, verify=root is None)
    engine.task.start_task(0)
    loop = loop_for("bp", task, request)
    for step in range(5):
        engine._step(0, step)
        loop.step(step)
    for s, model in enumerate(loop.models):
        for key, batched, plain in seed_state(engine.net, model, s):
            torch.testing.assert_close(plain, batched, rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(loop.metric_sums[s].float(), engine.task._metric_sum[s:s + 1].float())


@pytest.mark.parametrize("task", ["scr", "pmnist", "cimagenet"])
def test_cbp_loop_replaces_units(task, request):
    loop = loop_for("cbp", task, request, hparams={"replacement_rate": 0.2, "maturity_threshold": 2})
    steps = 6
    for step in range(steps):
        loop.step(step)
    for gnt in loop.gnts:
        ages = torch.cat(gnt.ages)
        assert ages.max() == steps and ages.min() < steps  # some units were replaced and restarted
    for model in loop.models:
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("method,task", [("bp", "scr"), ("cbp", "scr"), ("bp", "pmnist"), ("cbp", "pmnist"),
                                         ("bp", "cimagenet"), ("cbp", "cimagenet"), ("bp", "icifar100")])
def test_loop_timing_runs(method, task, request):
    root = data_root(request, task)
    rate = loop_seed_steps_per_second(method, task, "smoke", N_SEEDS, steps=2, warmup=1, device=CPU,
                                      data_dir=root, verify=root is None)
    assert rate > 0


def test_unsupported_methods_are_refused(request):
    with pytest.raises(ValueError, match="ResGnT"):
        loop_for("cbp", "icifar100", request)
    with pytest.raises(ValueError, match="offers"):
        LoopBaseline("l2", "scr", "smoke", 1, device=CPU)
    with pytest.raises(ValueError, match="steps per task"):
        loop_seed_steps_per_second("bp", "scr", "smoke", 1, steps=300, warmup=0, device=CPU)
