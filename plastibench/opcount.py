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

:mod:`plastibench.bench` counts one engine step of S seeds with it (after warm-up steps, so that
lazily built state such as optimizer buffers does not inflate the count), and one step of
:mod:`plastibench.loop_baseline` (all S seeds).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

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
