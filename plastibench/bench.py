"""Throughput measurement: seed-steps per second of the real training step, for S seeds at once."""

from __future__ import annotations

import tempfile
import time

import torch

from .engine import Engine
from .registry import METHODS, TASKS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_steps_per_second(method: str, task: str, protocol: str, n_seeds: int, *, steps: int, warmup: int,
                          device: torch.device, data_dir=None, verify: bool = True) -> float:
    """Times ``steps`` engine steps (after ``warmup``) of S = ``n_seeds`` seeds inside task 0."""
    task_cls, method_cls = TASKS.get(task), METHODS.get(method)
    proto = task_cls.protocol(protocol)
    if warmup + steps > proto.steps_per_task:
        raise ValueError(f"{task}/{protocol} has {proto.steps_per_task} steps per task; ask for fewer")
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(method_cls, method_cls.hparams_for(task), task_cls, proto, list(range(n_seeds)),
                        device=device, directory=tmp, config={}, data_dir=data_dir, verify=verify)
        engine.task.start_task(0)
        for step in range(warmup):
            engine._step(0, step)
        _sync(device)
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            engine._step(0, step)
        _sync(device)
        return steps * n_seeds / (time.perf_counter() - start)
