"""Will S seeds fit? A lower bound on a run's device memory, checked before the engine is built.

All S seeds train as one batched network, so memory grows linearly in S. The estimate measures a
1-seed copy of the run on the CPU: the bytes of its network's parameters, times S, for the
parameters, their gradients and the optimizer state (none for SGD, a momentum buffer for SGD with
momentum, two moments for Adam), plus the task's tensors (those with a leading seed axis times S,
the shared data once). Activations and method buffers are left out, so the estimate is a lower
bound: a run refused here cannot fit; a run let through may still need more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UsageError

GB = 1e9
MARGIN = 0.9  # activations, probes and the allocator need the rest


@dataclass(frozen=True)
class Estimate:
    """Bytes a run of ``seeds`` seeds needs at least, by part."""

    seeds: int
    parameters: int
    optimizer: int  # gradients and optimizer state
    data: int

    @property
    def total(self) -> int:
        return self.parameters + self.optimizer + self.data


def optimizer_copies(spec) -> int:
    """Parameter-sized tensors beside the parameters: the gradient, plus the optimizer's state."""
    name = getattr(spec, "name", "sgd")
    if name == "adam" or name.startswith("adam"):
        return 3
    return 2 if getattr(spec, "momentum", 0.0) else 1


def _tensors(value: Any, depth: int = 0):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, depth + 1)


def task_bytes(task) -> tuple[int, int]:
    """(bytes per seed, shared bytes) of a 1-seed task's tensors: a leading axis of 1 is the seed axis."""
    per_seed = shared = 0
    seen: set[int] = set()
    for t in _tensors(vars(task)):
        if id(t) in seen:
            continue
        seen.add(id(t))
        size = t.numel() * t.element_size()
        if t.dim() >= 1 and t.shape[0] == 1:
            per_seed += size
        else:
            shared += size
    return per_seed, shared


def estimate(method_cls, hparams, task_cls, protocol, n_seeds: int, *, data_dir=None) -> Estimate:
    """Measure a 1-seed copy (task and network on the CPU, data unverified: the run verifies it)."""
    one = torch.arange(1)
    task = task_cls(protocol, one, data_dir=data_dir, verify=False)
    net = task.network(seeds=one)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    spec = protocol.optimizer
    try:  # the method's optimizer (e.g. adam) where it only reads its hyperparameters
        shell = object.__new__(method_cls)
        shell.hp = dict(hparams)
        spec = method_cls.optimizer_spec(shell, protocol.optimizer)
    except Exception:  # noqa: BLE001 - a method that needs more than its hparams: the protocol's optimizer
        pass
    per_seed, shared = task_bytes(task)
    return Estimate(n_seeds, params * n_seeds, params * n_seeds * optimizer_copies(spec), per_seed * n_seeds + shared)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CPU: MemAvailable, or psutil), None when unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: not a dependency
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def check_fits(method: str, method_cls, hparams, task_cls, protocol, n_seeds: int, device: torch.device,
               *, data_dir=None) -> Estimate | None:
    """Refuse (UsageError) a run whose estimate exceeds the device's free memory; None when unknown."""
    free = available_bytes(device)
    if free is None:
        return None
    est = estimate(method_cls, hparams, task_cls, protocol, n_seeds, data_dir=data_dir)
    if est.total <= MARGIN * free:
        return est
    fit = int(MARGIN * free // max(1.0, est.total / max(1, n_seeds)))  # shared data counted per seed: fewer
    hint = f"e.g. --seeds 0-{fit - 1}" if fit > 1 else "--seeds 0" if fit == 1 else "or free memory"
    raise UsageError(
        f"{n_seeds} seeds of {method} on {protocol.task}/{protocol.name} need at least "
        f"{est.total / GB:.1f} GB on {device} (parameters {est.parameters / GB:.1f} GB, gradients and "
        f"optimizer state {est.optimizer / GB:.1f} GB, task data {est.data / GB:.1f} GB) but only "
        f"{free / GB:.1f} GB is free; ask for fewer seeds ({hint}) or run them in several --seeds ranges")
