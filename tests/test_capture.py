"""The capture machinery on a CPU: the stepper's schedule (warm-up, graph keys, remainders, events)
with a stand-in for CUDA graphs, the torch.compile stepper against eager, and ``--capture`` choices."""

import dataclasses

import numpy as np
import pytest
import torch

from plastibench import capture
from plastibench.engine import Engine
from plastibench.members import member_hparams
from plastibench.registry import METHODS, TASKS
from plastibench.results import run_config

CPU = torch.device("cpu")


class Replayer:
    """Stands in for a captured CUDA graph: ``replay`` runs the block's steps eagerly. (A real capture
    records kernels without running them, so each captured step runs exactly once, by its replay;
    this stand-in keeps that accounting.)"""

    def __init__(self, engine: Engine, n: int):
        self.engine, self.n, self.features = engine, n, []

    def replay(self) -> None:
        for _ in range(self.n):
            self.features = self.engine.train_step()


class FakeGraphStepper(capture.CudaGraphStepper):
    def _eager(self, n):
        for _ in range(n):
            features = self.engine.train_step()
            self.engine.step_in_task += 1
        return features

    def _capture(self, n):
        return Replayer(self.engine, n)


def _engine(method, task, tmp_path, hparams=None, data_dir=None, n_tasks=2, stepper=None):
    cls = METHODS.get(method)
    proto = dataclasses.replace(TASKS.get(task).protocol("smoke"), n_tasks=n_tasks)
    hp = cls.hparams_for(task, hparams)
    engine = Engine(cls, hp, TASKS.get(task), proto, [0, 1], device=CPU, directory=tmp_path,
                    config=run_config(method, hp, proto, [0, 1]), data_dir=data_dir, verify=data_dir is None)
    if stepper is not None:
        engine.stepper = stepper(engine)
    return engine


@pytest.mark.parametrize("method, task, hparams", [
    ("bp", "scr", None),
    ("cbp", "scr", {"replacement_rate": 0.01}),
    ("redo", "scr", {"period": 10, "threshold": 0.5}),  # periodic host events inside a task
    ("cbp", "cimagenet", {"replacement_rate": 0.05, "maturity_threshold": 4}),  # epochs: start_segment
    ("bp", "icifar100", None),  # epoch ends: validation and the learning-rate schedule
])
def test_replayed_blocks_give_the_eager_run(tmp_path, request, method, task, hparams):
    data = {"cimagenet": "tiny_imagenet32", "icifar100": "tiny_cifar100"}.get(task)
    data_dir = request.getfixturevalue(data) if data else None
    eager = _engine(method, task, tmp_path / "eager", hparams, data_dir)
    eager.run()
    graphs = _engine(method, task, tmp_path / "graphs", hparams, data_dir, stepper=FakeGraphStepper)
    graphs.stepper.steps_per_graph = 8
    graphs.run()
    assert graphs.stepper.captures > 0
    assert graphs.records.__len__() == eager.records.__len__()
    for a, b in zip(eager.records, graphs.records):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # NaN (not measured) equals NaN
    for (name, x), (_, y) in zip(eager.net.state_dict().items(), graphs.net.state_dict().items()):
        assert torch.equal(x, y), name


def test_graphs_are_keyed_by_length_and_dropped_at_a_new_task(tmp_path):
    engine = _engine("bp", "scr", tmp_path, stepper=FakeGraphStepper)
    engine.stepper.steps_per_graph = 16
    engine.task.start_task(0)
    engine.train_steps(0, 0, 3)  # the warm-up of task 0 runs eagerly
    assert engine.stepper.captures == 0 and engine.step_in_task == 3
    engine.train_steps(0, 3, 3 + 16 * 2 + 5)  # two replays of a 16-step graph and one of 5
    assert engine.step_in_task == 40 and sorted(k[1] for k in engine.stepper.graphs) == [5, 16]
    engine.task.start_task(1)
    engine.train_steps(1, 0, 3)
    assert engine.stepper.graphs == {}


def test_a_learning_rate_change_is_a_new_graph(tmp_path):
    engine = _engine("bp", "scr", tmp_path, stepper=FakeGraphStepper)
    engine.task.start_task(0)
    engine.train_steps(0, 0, 3 + 32)
    for group in engine.optimizer.param_groups:
        group["lr"] = group["lr"] / 2
    engine.train_steps(0, 35, 35 + 32)
    assert engine.stepper.captures == 2


def test_per_member_settings_key_graphs_by_identity(tmp_path):
    """Per-member settings (``plastibench.members``) are tensors a graph reads from memory: replays
    equal the eager run, an in-place change keeps the graph, a new tensor needs a new one."""
    cls = METHODS.get("adam")
    hp = member_hparams([cls.hparams_for("scr"), cls.hparams_for("scr", {"lr": 3e-3, "beta1": 0.8})], 2,
                        cls.vectorizable, CPU)
    proto = dataclasses.replace(TASKS.get("scr").protocol("smoke"), n_tasks=1, steps_per_task=80)
    engines = [Engine(cls, hp, TASKS.get("scr"), proto, [0, 1, 0, 1], device=CPU, directory=tmp_path / str(i),
                      config=run_config("adam", {}, proto, [0, 1, 0, 1])) for i in range(2)]
    eager, graphs = engines
    graphs.stepper = FakeGraphStepper(graphs)
    graphs.stepper.steps_per_graph = 8
    for e in engines:
        e.run()
    assert graphs.stepper.captures > 0
    for (name, x), (_, y) in zip(eager.net.state_dict().items(), graphs.net.state_dict().items()):
        assert torch.equal(x, y), name
    key = capture._settings(graphs.optimizer)
    group = graphs.optimizer.param_groups[0]
    group["lr"].mul_(0.5)
    assert capture._settings(graphs.optimizer) == key
    group["lr"] = group["lr"].clone()
    assert capture._settings(graphs.optimizer) != key


def test_compiled_step_matches_eager_to_float_rounding(tmp_path):
    eager = _engine("cbp", "scr", tmp_path / "eager", {"replacement_rate": 0.01}, n_tasks=1)
    compiled = _engine("cbp", "scr", tmp_path / "compiled", {"replacement_rate": 0.01}, n_tasks=1,
                       stepper=capture.CompiledStepper)
    for e in (eager, compiled):
        e.task.start_task(0)
        e.train_steps(0, 0, 60)
    for x, y in zip(eager.net.parameters(), compiled.net.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_capture_modes_resolve_per_device():
    assert capture.resolve("auto", CPU) == "eager"
    assert capture.resolve("auto", torch.device("cuda")) == "cuda-graph"
    assert capture.resolve("auto", torch.device("cuda"), capturable=False) == "eager"
    assert capture.resolve("compile", CPU) == "compile"
    with pytest.raises(ValueError, match="needs --device cuda"):
        capture.resolve("cuda-graph", CPU)
    with pytest.raises(ValueError, match="unknown capture mode"):
        capture.resolve("fast", CPU)
