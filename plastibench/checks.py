"""Checks that a training step can be captured, run on a CPU: what a CUDA graph would break on.

:func:`check_step` trains an engine for a few steps and watches every ``Engine.train_step`` call.
It reports, as a list of one-line problems (empty when the step is capturable):

* **host synchronisation** inside a step: an operation whose result the host must wait for
  (``aten._local_scalar_dense`` from ``.item()``/``bool()``/``int()``, ``nonzero``, ``masked_select``,
  ``unique``, ``equal``, ``is_nonzero``, data-dependent ``repeat_interleave``), or a transfer to host
  memory (``Tensor.cpu``/``numpy``/``tolist``/``item``);
* **graph instability**: the sequence of dispatched operations, with their shapes, dtypes, devices
  and non-tensor arguments, differs between two in-task steps (a host value that changes from step
  to step is baked into a captured graph);
* **default-device allocation**: the steps run under ``torch.set_default_device("meta")`` while the
  engine's device is the CPU, so a tensor created without ``device=`` lands on ``meta`` (on CUDA it
  would land on the CPU);
* **host state changing inside a step**: a Python number of the method, task or optimizer that
  changes, or a state tensor that is rebound instead of updated in place (a replayed graph would
  keep reading the old tensor).

``tests/test_conformance.py`` runs it for every registered method on every task, so a contributed
method learns at once whether its step captures.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
            "unique_consecutive", "equal", "is_nonzero", "allclose"}
HOST_TRANSFERS = ("cpu", "numpy", "tolist", "item")
_FOREIGN = {"torch", "numpy", "builtins", "typing", "collections", "weakref", "pathlib", "functools", "types"}


def _describe(value: Any) -> Any:
    """A hashable description of an operation argument: tensors by shape, dtype and device."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), value.device.type)
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _describe(v)) for k, v in value.items()))
    if isinstance(value, (int, float, bool, str, type(None))):
        return value
    return str(value)


class StepRecorder(TorchDispatchMode):
    """Records every dispatched operation with its described arguments; flags syncs and meta outputs."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.trace: list[tuple] = []
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.trace.append((str(func), _describe(args), _describe(kwargs)))
        if name in SYNC_OPS or (name == "repeat_interleave" and args and isinstance(args[0], torch.Tensor)
                                and len(args) > 1 and isinstance(args[1], torch.Tensor)):
            self.problems.append(f"host synchronisation: {func}")
        out = func(*args, **kwargs)
        if self.device.type != "meta":
            for t in out if isinstance(out, (list, tuple)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type == "meta":
                    self.problems.append(f"tensor created without device= (on the default device): {func}")
                    break
        return out


@contextlib.contextmanager
def _host_transfers(problems: list[str]) -> Iterator[None]:
    """Flag ``Tensor.cpu/numpy/tolist/item`` calls (a device-to-host copy on a GPU)."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_TRANSFERS}

    def wrap(name, original):
        def flagged(self, *args, **kwargs):
            problems.append(f"host transfer: Tensor.{name}()")
            return original(self, *args, **kwargs)
        return flagged

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def host_state(obj: Any, path: str = "", seen: set[int] | None = None, depth: int = 0) -> dict[str, Any]:
    """Python numbers and tensor identities reachable from ``obj`` (dicts, lists, plain objects; not
    into modules' parameters or foreign libraries), by path."""
    seen = set() if seen is None else seen
    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        out[path] = ("tensor", obj.data_ptr(), tuple(obj.shape), str(obj.dtype))
        return out
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        out[path] = obj
        return out
    if id(obj) in seen or depth > 6 or callable(obj) and not hasattr(obj, "__dict__"):
        return out
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = [(str(k) if not isinstance(k, torch.Tensor) else f"<param {tuple(k.shape)}>", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif isinstance(obj, torch.nn.Module):
        items = [(k, v) for k, v in vars(obj).items() if not k.startswith("_")]
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and (
            isinstance(obj, torch.optim.Optimizer) or type(obj).__module__.split(".")[0] not in _FOREIGN):
        items = list(vars(obj).items())
    else:
        return out
    for key, value in items:
        out.update(host_state(value, f"{path}.{key}", seen, depth + 1))
    return out


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)]


class _Stop(Exception):
    """A watched step failed; the problems say why."""


class _Watching:
    """A stepper that runs each step eagerly under the recorder and compares the host state."""

    def __init__(self, engine, warmup: int):
        self.engine, self.warmup = engine, warmup
        self.steps = 0
        self.traces: list[tuple[int, list]] = []
        self.problems: list[str] = []

    def _watched(self):
        engine = self.engine
        roots = {"method": engine.method, "task": engine.task, "optimizer": engine.optimizer}
        before = host_state(roots)
        recorder = StepRecorder(engine.device)
        try:
            with _host_transfers(recorder.problems), torch.device("meta"), recorder:
                features = engine.train_step()
        except (RuntimeError, NotImplementedError) as error:
            if "meta" not in str(error):
                raise
            self.problems.append(f"tensor created without device= (on the default device): {error}")
            raise _Stop from error
        changed = _changed(before, host_state(roots))
        if changed:
            self.problems.append(f"host state changed inside a step: {', '.join(changed[:5])}")
        self.problems.extend(recorder.problems)
        self.traces.append((engine.task_index, recorder.trace))
        return features

    def run(self, task_index: int, n: int):
        features = []
        for _ in range(n):
            watch = self.steps >= self.warmup
            features = self._watched() if watch else self.engine.train_step()
            self.engine.step_in_task += 1
            self.steps += 1
        return features


def check_step(engine, n_steps: int, warmup: int = 2, task: int = 0) -> list[str]:
    """Train ``engine`` (task ``task``, started here) for ``n_steps`` steps; the problems found,
    deduplicated. A later task than 0 checks the steps that read its predecessor (a transition).

    The first ``warmup`` steps are not watched: lazily built state (optimizer buffers, blocks) may be
    created there, as a CUDA graph's warm-up allows.
    """
    if engine.device.type != "cpu":
        raise ValueError("check_step runs on the CPU (it uses the meta device as the default device)")
    watcher = _Watching(engine, warmup)
    engine.stepper = watcher
    engine.task.start_task(task)
    engine.task.begin_task(task, engine.net, engine.optimizer)
    engine.method.on_task_start(task)
    try:
        engine.train_steps(task, 0, min(n_steps, engine.task.steps_in_task(task)))
    except _Stop:
        pass
    problems = list(dict.fromkeys(watcher.problems))
    traces = [trace for _, trace in watcher.traces]
    for i in range(1, len(traces)):
        if traces[i] != traces[0]:
            diff = next((j for j, (a, b) in enumerate(zip(traces[0], traces[i])) if a != b),
                        min(len(traces[0]), len(traces[i])))
            first = traces[0][diff] if diff < len(traces[0]) else "(end)"
            other = traces[i][diff] if diff < len(traces[i]) else "(end)"
            problems.append(f"graph instability: watched step {i} differs from step 0 at operation {diff}: "
                            f"{str(first)[:200]} vs {str(other)[:200]}")
            break
    return problems
