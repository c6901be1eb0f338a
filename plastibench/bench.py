"""Throughput measurement: seed-steps per second of the real training step, for S seeds at once.

For each seed count S, ``bench`` times the engine's step (eager, and captured where the device
allows: a CUDA graph on CUDA, ``torch.compile`` on request) and, with ``baseline="loop"``, the
reference's way of training S seeds (:mod:`plastibench.loop_baseline`: one ``torch.nn`` model and
one ``torch.optim`` optimizer per seed, in a Python loop) on the same network, batch and data, so
the speed-up is a ratio measured in one run on one machine. It also counts the aten operations one
step dispatches (:mod:`plastibench.opcount`), a device-independent measure of per-step overhead.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from . import rng
from .capture import resolve
from .engine import Engine
from .opcount import count_ops
from .registry import METHODS, TASKS


@dataclass(frozen=True)
class Measurement:
    """One timed configuration: ``mode`` is eager, cuda-graph, compile or loop."""

    method: str
    task: str
    protocol: str
    seeds: int
    mode: str
    seed_steps_per_s: float
    ops_per_step: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_length(task: str, protocol: str, warmup: int, steps: int) -> None:
    proto = TASKS.get(task).protocol(protocol)
    if warmup + steps > proto.steps_per_task:
        raise ValueError(f"{task}/{protocol} has {proto.steps_per_task} steps per task; ask for fewer "
                         f"(--warmup {warmup} + --steps {steps})")


def started_engine(method: str, task: str, protocol: str, n_seeds: int, *, device: torch.device,
                   capture: str = "off", data_dir=None, verify: bool = True, directory=None) -> Engine:
    """An engine of seeds 0..S-1 with task 0 started, ready for ``train_steps(0, ...)``."""
    task_cls, method_cls = TASKS.get(task), METHODS.get(method)
    engine = Engine(method_cls, method_cls.hparams_for(task), task_cls, task_cls.protocol(protocol),
                    list(range(n_seeds)), device=device, directory=directory or tempfile.mkdtemp(), config={},
                    data_dir=data_dir, verify=verify, capture=capture)
    engine.task.start_task(0)
    engine.task.begin_task(0, engine.net, engine.optimizer)
    engine.method.on_task_start(0)
    return engine


def step_ops(engine: Engine, step: int) -> int:
    """Aten operations of one eager step (in-task step ``step`` of task 0), host events excluded."""
    offset = engine.task.task_offset(0)
    engine.task.start_segment(0, step)
    rng.prepare(engine.ctx.seeds, offset + step, 1)
    engine.clock.set(offset + step, step)
    ops = count_ops(engine.train_step)
    engine.step_in_task = step + 1
    return ops


def measure(method: str, task: str, protocol: str, n_seeds: int, *, steps: int, warmup: int,
            device: torch.device, capture: str = "off", data_dir=None, verify: bool = True) -> Measurement:
    """Time ``steps`` engine steps of task 0 (after ``warmup``), S = ``n_seeds``, ``capture`` mode."""
    _check_length(task, protocol, warmup + 1, steps)
    mode = resolve(capture, device, METHODS.get(method).capturable)
    with tempfile.TemporaryDirectory() as tmp:
        engine = started_engine(method, task, protocol, n_seeds, device=device, capture=capture,
                                data_dir=data_dir, verify=verify, directory=tmp)
        engine.train_steps(0, 0, warmup)
        ops = step_ops(engine, warmup) if mode == "eager" else None
        first = engine.step_in_task
        _sync(device)
        start = time.perf_counter()
        engine.train_steps(0, first, first + steps)
        _sync(device)
        elapsed = time.perf_counter() - start
    return Measurement(method, task, protocol, n_seeds, mode, steps * n_seeds / elapsed, ops)


def measure_loop(method: str, task: str, protocol: str, n_seeds: int, *, steps: int, warmup: int,
                 device: torch.device, data_dir=None, verify: bool = True) -> Measurement:
    """The loop baseline's throughput and operations per step (all S seeds), as :func:`measure`."""
    from .loop_baseline import LoopBaseline

    _check_length(task, protocol, warmup + 1, steps)
    loop = LoopBaseline(method, task, protocol, n_seeds, device=device, data_dir=data_dir, verify=verify)
    for step in range(warmup):
        loop.step(step)
    ops = count_ops(lambda: loop.step(warmup))
    _sync(device)
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + 1 + steps):
        loop.step(step)
    _sync(device)
    return Measurement(method, task, protocol, n_seeds, "loop", steps * n_seeds / (time.perf_counter() - start), ops)


def seed_steps_per_second(method: str, task: str, protocol: str, n_seeds: int, *, steps: int, warmup: int,
                          device: torch.device, data_dir=None, verify: bool = True, capture: str = "off") -> float:
    """Seed-steps/s of the engine's step (see :func:`measure`)."""
    return measure(method, task, protocol, n_seeds, steps=steps, warmup=warmup, device=device, capture=capture,
                   data_dir=data_dir, verify=verify).seed_steps_per_s
