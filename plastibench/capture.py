"""How a segment of training steps runs: eagerly, replayed from CUDA graphs, or compiled.

The engine hands a *stepper* the number of steps to run; the step itself is ``Engine.train_step``,
a pure function of device state (see :mod:`plastibench.engine`). Three steppers:

* ``eager``: calls the step n times from Python, checking for Ctrl-C between steps.
* ``cuda-graph``: captures ``STEPS_PER_GRAPH`` consecutive steps (forward, loss, backward, optimizer,
  method hooks) as one ``torch.cuda.CUDAGraph`` and replays it; a shorter remainder gets a graph of
  its own length. A graph is keyed by the task index, its length and the optimizer's settings (a
  learning-rate schedule changes them between segments; a per-member tensor setting counts by
  identity, as the graph reads its memory), and the graphs of a finished task are
  dropped. The first steps of every task run eagerly, on a side stream, as the warm-up capture needs
  (lazy optimizer state, cuBLAS and cuDNN workspaces); capture records kernels without running them,
  so each captured step is then run exactly once, by its replay.
* ``compile``: the step compiled with ``torch.compile`` (inductor), called n times; the CPU twin of
  the graph capture, off by default (``docs/benchmarks.md`` says where it pays).

``--capture auto`` means ``cuda-graph`` on CUDA and ``eager`` elsewhere; ``off`` is ``eager``. A
method with ``capturable = False`` runs eagerly whatever was asked, and the run records it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .engine import Engine

CAPTURE_MODES = ("auto", "off", "cuda-graph", "compile")
STEPS_PER_GRAPH = 32
WARMUP_STEPS = 3


class EagerStepper:
    """Runs each step from Python; stops early (between steps) when the engine is interrupted."""

    mode = "eager"

    def __init__(self, engine: Engine):
        self.engine = engine

    def run(self, task_index: int, n: int) -> list[torch.Tensor]:
        """Run up to ``n`` steps, advancing ``engine.step_in_task`` after each; the last features."""
        return self._loop(self.engine.train_step, n)

    def _loop(self, step, n: int) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for done in range(n):
            if done and (self.engine.interrupted or self.engine.paused()):
                break
            features = step()
            self.engine.step_in_task += 1
        return features


class CompiledStepper(EagerStepper):
    """Runs ``torch.compile(train_step)`` (inductor) n times; the first call of each task compiles."""

    mode = "compile"

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self.compiled = torch.compile(engine.train_step, dynamic=False)

    def run(self, task_index: int, n: int) -> list[torch.Tensor]:
        return self._loop(self.compiled, n)


class _Same:
    """A tensor as part of a graph key: equal only to itself (a graph reads that tensor's memory, so
    an in-place change is seen by the replay, a new tensor needs a new graph). The key keeps it alive."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __eq__(self, other) -> bool:
        return isinstance(other, _Same) and other.tensor is self.tensor

    def __hash__(self) -> int:
        return id(self.tensor)


def _key(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_key(v) for v in value)
    return _Same(value) if torch.is_tensor(value) else value


def _settings(optimizer: torch.optim.Optimizer) -> tuple:
    """The optimizer's settings (a graph bakes numbers in): per group, every number, string or tuple,
    and every tensor by identity (a per-member setting, :mod:`plastibench.members`)."""
    return tuple(tuple(sorted((k, _key(v)) for k, v in group.items() if k != "params"
                              and isinstance(v, (int, float, bool, str, tuple, type(None), torch.Tensor))))
                 for group in optimizer.param_groups)


class _Captured:
    """A captured block of steps: ``replay()`` runs them; ``features`` are the last step's outputs
    (static tensors that every replay overwrites)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, features: list[torch.Tensor]):
        self.graph, self.features = graph, features

    def replay(self) -> None:
        self.graph.replay()


class CudaGraphStepper:
    """Replays captured blocks of steps (``torch.cuda.CUDAGraph``); see the module docstring."""

    mode = "cuda-graph"

    def __init__(self, engine: Engine, steps_per_graph: int = STEPS_PER_GRAPH):
        self.engine = engine
        self.steps_per_graph = steps_per_graph
        self.graphs: dict[tuple, _Captured] = {}
        self.warm_task: int | None = None
        self.captures = 0

    def _eager(self, n: int) -> list[torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(n):
                features = self.engine.train_step()
                self.engine.step_in_task += 1
        torch.cuda.current_stream().wait_stream(stream)
        return features

    def _capture(self, n: int) -> _Captured:
        """Capture ``n`` consecutive steps as one CUDA graph (recorded, not run)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                features = self.engine.train_step()
        return _Captured(graph, features)

    def _graph(self, task_index: int, n: int) -> _Captured:
        key: tuple[Any, ...] = (task_index, n, _settings(self.engine.optimizer))
        if key not in self.graphs:
            self.graphs[key] = self._capture(n)
            self.captures += 1
        return self.graphs[key]

    def run(self, task_index: int, n: int) -> list[torch.Tensor]:
        if self.warm_task != task_index:  # a new task: drop the old graphs, warm up eagerly
            self.graphs.clear()
            self.warm_task = task_index
            return self._eager(min(n, WARMUP_STEPS))
        done, features = 0, []
        while done < n and not (done and (self.engine.interrupted or self.engine.paused())):
            k = min(self.steps_per_graph, n - done)
            captured = self._graph(task_index, k)
            captured.replay()
            features = captured.features
            done += k
            self.engine.step_in_task += k
        return features


def resolve(mode: str, device: torch.device, capturable: bool = True) -> str:
    """The stepper a ``--capture`` value gives on ``device``: eager, cuda-graph or compile."""
    if mode not in CAPTURE_MODES:
        raise ValueError(f"unknown capture mode {mode!r}; known: {', '.join(CAPTURE_MODES)}")
    if not capturable or mode == "off" or (mode == "auto" and device.type != "cuda"):
        return "eager"
    if mode == "auto":
        return "cuda-graph"
    if mode == "cuda-graph" and device.type != "cuda":
        raise ValueError("--capture cuda-graph needs --device cuda; use auto, off or compile")
    return mode


def make_stepper(mode: str, engine: Engine):
    """The stepper for ``mode`` on the engine's device and method (see :func:`resolve`)."""
    kind = resolve(mode, engine.device, getattr(engine.method, "capturable", True))
    return {"eager": EagerStepper, "cuda-graph": CudaGraphStepper, "compile": CompiledStepper}[kind](engine)
