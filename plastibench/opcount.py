"""Counting the aten operations a piece of code dispatches (a device-independent cost measure).

:func:`op_counts` runs ``fn()`` under a ``TorchDispatchMode`` and counts every call that reaches
the Python dispatch key, by overload name (``"aten.add.Tensor"``). What is counted, precisely:

* every aten operation dispatched on a tensor, *including* view and metadata operations
  (``aten.view``, ``aten.t``, ``aten.expand``, ``aten.detach``, ...), factory functions
  (``aten.empty``, ``aten.arange``, ``aten.zeros``, ...) and copies (``aten._to_copy``,
  ``aten.copy_``), none of them filtered out;
* the backward pass's operations when ``fn`` calls ``backward()`` (the autograd engine runs them
  under the same mode);
* composite operations after their decomposition: ``F.linear`` may count as ``aten.t`` +
  ``aten.addmm``, a fused ``torch._foreach_add_`` as one operation over all its tensors.

Only the ``aten`` namespace is counted by :func:`count_ops` and the ``*ops_per_step`` totals;
:func:`op_counts` also lists other namespaces that reach the mode (e.g. the optimizers'
``profiler._record_function_enter_new``, host-side bookkeeping that launches nothing).

Not counted: Python-only work and whatever runs below the dispatcher (kernels, launches), and
tensor creation from host data that bypasses dispatch (``torch.tensor(...)`` of Python numbers).
The count is a proxy for per-step launch overhead; it does not measure the work each op does.

:func:`ops_per_step` counts one engine step of S seeds (after warm-up steps, so that lazily built
state such as optimizer buffers and random-number blocks does not inflate the count);
:func:`loop_ops_per_step` counts one step of :mod:`plastibench.loop_baseline` (all S seeds).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def op_counts(fn: Callable[[], Any]) -> Counter[str]:
    """How often ``fn()`` dispatched each aten operation, keyed by overload (``"aten.mul.Tensor"``)."""
    counter = _OpCounter()
    with counter:
        fn()
    return counter.counts


def aten_total(counts: Counter[str]) -> int:
    """The number of ``aten`` operations in ``counts`` (other namespaces left out)."""
    return sum(n for name, n in counts.items() if name.startswith("aten."))


def count_ops(fn: Callable[[], Any]) -> int:
    """The number of aten operations ``fn()`` dispatched (see the module docstring for what counts)."""
    return aten_total(op_counts(fn))


@contextlib.contextmanager
def _engine_stepper(method: str, task: str, protocol: str, n_seeds: int, device: torch.device, data_dir,
                    verify: bool, warmup: int) -> Iterator[Callable[[], None]]:
    """The one place that touches the engine: an engine built as ``plastibench.bench`` builds it,
    ``warmup`` steps of task 0 done, yielding a callable that runs the next step."""
    from .engine import Engine
    from .registry import METHODS, TASKS

    task_cls, method_cls = TASKS.get(task), METHODS.get(method)
    proto = task_cls.protocol(protocol)
    if warmup + 1 > proto.steps_per_task:
        raise ValueError(f"{task}/{protocol} has {proto.steps_per_task} steps per task; ask for fewer")
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(method_cls, method_cls.hparams_for(task), task_cls, proto, list(range(n_seeds)),
                        device=device, directory=tmp, config={}, data_dir=data_dir, verify=verify)
        engine.task.start_task(0)
        for step in range(warmup):
            engine._step(0, step)
        yield lambda: engine._step(0, warmup)


def ops_per_step_counts(method: str, task: str, protocol: str, n_seeds: int, *, device: torch.device,
                        data_dir=None, verify: bool = True, warmup: int = 2) -> Counter[str]:
    """The operations of one engine step (step ``warmup`` of task 0) of ``n_seeds`` seeds."""
    with _engine_stepper(method, task, protocol, n_seeds, torch.device(device), data_dir, verify,
                         warmup) as step:
        return op_counts(step)


def ops_per_step(method: str, task: str, protocol: str, n_seeds: int, *, device: torch.device,
                 data_dir=None, verify: bool = True, warmup: int = 2) -> int:
    """The number of aten operations one engine step of ``n_seeds`` seeds dispatches."""
    return aten_total(ops_per_step_counts(method, task, protocol, n_seeds, device=device, data_dir=data_dir,
                                          verify=verify, warmup=warmup))


def loop_ops_per_step(method: str, task: str, protocol: str, n_seeds: int, *, device: torch.device,
                      data_dir=None, verify: bool = True, warmup: int = 2) -> int:
    """The number of aten operations one step of the loop baseline (all ``n_seeds`` seeds) dispatches."""
    from .loop_baseline import LoopBaseline

    loop = LoopBaseline(method, task, protocol, n_seeds, device=device, data_dir=data_dir, verify=verify)
    if warmup + 1 > loop.protocol.steps_per_task:
        raise ValueError(f"{task}/{protocol} has {loop.protocol.steps_per_task} steps per task; ask for fewer")
    for step in range(warmup):
        loop.step(step)
    return count_ops(lambda: loop.step(warmup))
