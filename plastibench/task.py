"""The task API: a stream of tasks that feeds S seeds at once, with its protocols.

A task builds the seed-batched network, yields batches ``x[S, B, ...], y[S, B, ...]`` that live on
the device (gathered by per-seed index tensors), computes a per-seed loss ``[S]``, accumulates its
per-task metric on the device, and measures plasticity diagnostics at each task boundary (by
default :func:`plastibench.diagnostics.measure` on its probe batch).

Inside a step (``batch``, ``loss``, ``step_metric``) a task reads the step only as a device tensor
and updates its buffers in place, so that a block of steps can be captured and replayed; whatever
depends on a host value (an epoch's shuffle, a learning-rate schedule, validation) happens between
steps, in ``start_segment`` and ``end_segment``, every ``segment_every(t)`` steps.
Every random draw goes through :mod:`plastibench.rng`, keyed by seed, so seed k never depends on
the seeds beside it.

Two settings describe how a stream with task boundaries changes; a task offers them through
``options`` (``BOUNDARIES``, ``TRANSITION``):

* ``boundaries=visible|hidden``: with ``hidden`` the engine calls ``Method.on_task_start`` only for
  task 0 (the start of the stream, which every learner sees: it is when the learner is built), never
  at a boundary between tasks; a method that acts there (``Method.needs_boundaries``) is refused at
  start-up (:func:`require_boundaries`).
* ``transition=abrupt|linear:N``: with ``linear:N``, in-task step t < N of task k ≥ 1 draws each
  sample from task k with probability t/N and from task k − 1 otherwise (:meth:`Task.from_new`);
  from step N on, every sample is task k's. Task 0 has no predecessor. The draw is keyed by the run's
  device step (``rng``), so it is capturable and the same for a seed alone or beside others.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from . import diagnostics, rng
from .clock import StepClock
from .errors import UsageError
from .protocol import Protocol
from .registry import UnknownName


# The settings of streams with task boundaries (``options``), their first value the default.
BOUNDARIES = {"boundaries": ("visible", "hidden")}
TRANSITION = {"transition": ("abrupt", "linear:N")}


def _fills(value: str, choice: str) -> bool:
    """``value`` is ``choice``, or fills its pattern: ``"linear:N"`` takes ``linear:`` and a positive
    integer written in plain digits without a leading zero (one spelling, so one protocol hash)."""
    if not choice.endswith(":N"):
        return value == choice
    prefix, _, number = value.partition(":")
    return prefix + ":N" == choice and number.isascii() and number.isdigit() and number[0] != "0"


def into(buffer: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """``values`` written into ``buffer`` in place when the shapes agree (a captured step reads the
    buffer's memory: an epoch's order, say), else ``values`` itself as the new buffer."""
    if buffer is None or buffer.shape != values.shape:
        return values
    return buffer.copy_(values)


class Epochs:
    """Mixin of a task read in epochs: task t's ``n_examples(t)`` examples in a fresh per-seed order
    each epoch of ``epoch_steps(t)`` steps (``rng.permutation`` keyed by the epoch, purpose
    ``NAME/epoch/t``), kept in one persistent buffer that the steps read (``epoch_slots``)."""

    _epoch_key: tuple[int, int] | None = None
    _epoch_order: torch.Tensor | None = None
    _epoch_rows: torch.Tensor | None = None

    def segment_every(self, task_index):
        return self.epoch_steps(task_index)

    def start_segment(self, task_index, step):
        epoch = step // self.epoch_steps(task_index)
        if self._epoch_key != (task_index, epoch):
            order = rng.permutation(self.seeds, epoch, f"{self.name}/epoch/{task_index}", self.n_examples(task_index))
            self._epoch_order = into(self._epoch_order, order)
            self._epoch_key = (task_index, epoch)
        if self._epoch_rows is None:
            self._epoch_rows = torch.arange(self.protocol.batch_size, device=self.seeds.device)

    def epoch_slots(self, task_index: int, step: torch.Tensor) -> torch.Tensor:
        """The examples ``[S, B]`` (indices into the task's ``n_examples``) of ``step``, a device step."""
        k = step % self.epoch_steps(task_index)
        return self._epoch_order.index_select(1, k * self.protocol.batch_size + self._epoch_rows)


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-seed mean cross-entropy ``[S]`` of logits ``[S, B, C]`` against labels ``[S, B]``."""
    s, b, c = out.shape
    return torch.nn.functional.cross_entropy(out.reshape(s * b, c), y.reshape(-1), reduction="none").view(s, b).mean(1)


def transition_steps(protocol: Protocol) -> int:
    """N of ``transition=linear:N`` (0 for ``abrupt``, the default)."""
    value = protocol.settings.get("transition", "abrupt")
    return 0 if value == "abrupt" else int(value.partition(":")[2])


def boundaries_hidden(protocol: Protocol) -> bool:
    return protocol.settings.get("boundaries", "visible") == "hidden"


def require_boundaries(method_cls: type, task_cls: type, protocol: Protocol) -> None:
    """Refuse (UsageError) a method that acts at task boundaries on a stream that hides them."""
    if boundaries_hidden(protocol) and getattr(method_cls, "needs_boundaries", False):
        how = ("runs with task.boundaries=hidden; run it with task.boundaries=visible" if task_cls.has_boundaries
               else "has no task boundaries (its tasks are bins of one stream)")
        raise UsageError(f"method {method_cls.name!r} acts at task boundaries (on_task_start), but "
                         f"{protocol.task} {how}")


class Task:
    """Base class. The per-task metric is the mean over the task's steps of ``step_metric``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    protocols: ClassVar[dict[str, Protocol]] = {}
    plot_bin_tasks: ClassVar[int | None] = None  # tasks per plotted bin, as the paper bins
    online: ClassVar[bool] = False  # every step sees fresh examples (plots add an examples axis)
    # Protocol settings a user may choose with ``--set task.KEY=VALUE``: KEY -> allowed values, the
    # first being what every protocol means when the setting is absent; a value "NAME:N" stands for
    # NAME:1, NAME:2, ... (``BOUNDARIES``, ``TRANSITION``).
    options: ClassVar[dict[str, tuple[str, ...]]] = {}
    # False: the "tasks" are bins of one stream, with no boundary a learner could act on (the
    # protocols set boundaries=hidden and offer no choice)
    has_boundaries: ClassVar[bool] = True
    clock: StepClock | None = None  # the run's device clock, set by the engine (read by ``from_new``)

    def __init__(self, protocol: Protocol, seeds: torch.Tensor, *, data_dir: str | Path | None = None,
                 verify: bool = True):
        self.protocol = protocol
        self.seeds = seeds
        self.device = seeds.device
        self.data_dir = data_dir
        self.verify = verify
        self._metric_sum = torch.zeros(seeds.numel(), dtype=torch.float64, device=self.device)
        self._metric_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.transition_steps = transition_steps(protocol)
        if self.transition_steps:
            self._transition = rng.Block(seeds, "task/transition", (protocol.batch_size,), rng.uniform)

    @classmethod
    def protocol(cls, name: str) -> Protocol:
        if name not in cls.protocols:
            raise UnknownName("protocol", name, sorted(cls.protocols), where=f" for task {cls.name!r}")
        return cls.protocols[name]

    @classmethod
    def with_options(cls, protocol: Protocol, options: Mapping[str, str]) -> Protocol:
        """``protocol`` with the settings ``options`` chooses (``--set task.KEY=VALUE``).

        A chosen value enters ``settings`` and so the protocol's hash; a value equal to the default
        is left out, so that the protocol stays the registered one. Raises ValueError on an unknown
        key or value, naming the allowed ones.
        """
        chosen = {}
        for key, value in options.items():
            if key not in cls.options:
                known = ", ".join(sorted(cls.options)) or "none"
                raise ValueError(f"task {cls.name!r} has no option {key!r} (its options: {known})")
            if not any(_fills(value, choice) for choice in cls.options[key]):
                raise ValueError(f"task option {key}={value!r}: choose one of {', '.join(cls.options[key])}")
            if value != cls.options[key][0]:
                chosen[key] = value
        if not chosen:
            return protocol
        return dataclasses.replace(protocol, settings={**protocol.settings, **chosen})

    # ----- what a task implements -----
    def network(self, seeds: torch.Tensor | None = None) -> torch.nn.Module:
        """The seed-batched network, initialised from ``seeds`` (default: the run's seeds; resets
        draw a fresh network from other keys)."""
        raise NotImplementedError

    def steps_in_task(self, task_index: int) -> int:
        """Optimizer steps of task ``task_index`` (``steps_per_task`` unless the task grows)."""
        return self.protocol.steps_per_task

    def task_offset(self, task_index: int) -> int:
        """Steps of all tasks before ``task_index``: the global index of its first step."""
        return sum(self.steps_in_task(t) for t in range(task_index))

    def total_steps(self) -> int:
        return self.task_offset(self.protocol.n_tasks)

    def start_task(self, task_index: int) -> None:
        """Set up task ``task_index`` (its permutation, class pair, ...). Must be idempotent: the
        engine calls it again for the same index after resuming from a checkpoint."""

    def begin_task(self, task_index: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Act on the learner once, before the task's first step (e.g. zero the output head)."""

    def segment_every(self, task_index: int) -> int | None:
        """Steps between the task's own events within task ``task_index`` (its epoch), or None."""
        return None

    def start_segment(self, task_index: int, step: int) -> None:
        """Between steps, before in-task step ``step`` (a host int): set up what the steps up to the
        next event read (an epoch's order, in a persistent buffer). Must be idempotent: the engine
        calls it before every segment, also mid-epoch after a resume."""

    def end_segment(self, task_index: int, steps_done: int, net: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> None:
        """Between steps, once ``steps_done`` (a host int) is a multiple of ``segment_every``: epoch
        ends, learning-rate schedules, validation."""

    def batch(self, task_index: int, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of in-task step ``step``, a 0-dim int64 device tensor (never a host int)."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_metric(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """The per-seed value ``[S]`` of the protocol's metric for this step's prediction."""
        return loss

    def probe(self, task_index: int) -> torch.Tensor:
        """A fixed input batch ``[S, P, ...]`` for diagnostics at the start of ``task_index``."""
        raise NotImplementedError

    def diagnostics(self, task_index: int, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Diagnostics of ``net`` before task ``task_index`` trains (at the end of the run: after the
        last task, with its index), name -> per-seed ``[S]``; must leave ``net`` unchanged."""
        return diagnostics.measure(net, self.probe(task_index))

    def data_record(self) -> dict[str, Any]:
        """Checksums and verification status of the data used (empty for synthetic tasks)."""
        return {}

    def from_new(self, step: torch.Tensor) -> torch.Tensor:
        """Bool ``[S, B]``: which samples of in-task step ``step`` (a device tensor) come from the new
        task under ``transition=linear:N``: u < min(step/N, 1), u uniform on [0, 1) from ``rng`` keyed
        by the run's device step (``clock.step``). All false at step 0, all true from step N on (a
        task's predecessor at task 0 is task 0 itself)."""
        share = (step.to(torch.float32) / self.transition_steps).clamp_(max=1.0)
        return self._transition.at(self.clock.step) < share

    # ----- bookkeeping shared by all tasks -----
    def observe(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        self._metric_sum += self.step_metric(out, y, loss).to(torch.float64)
        self._metric_steps += 1  # in place: a device counter

    def end_task(self, task_index: int, net: torch.nn.Module) -> torch.Tensor | Mapping[str, torch.Tensor]:
        """The task's metric per seed ``[S]`` (here the mean of ``step_metric``; tasks measured on
        held-out data evaluate ``net`` instead), or name -> ``[S]``: the protocol's metric and
        further per-task metrics recorded beside it; resets the accumulator."""
        value = self._metric_sum / self._metric_steps.clamp_min(1)
        self._metric_sum.zero_()
        self._metric_steps.zero_()
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"metric_sum": self._metric_sum.clone(), "metric_steps": self._metric_steps.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._metric_sum.copy_(state["metric_sum"])
        self._metric_steps.copy_(torch.as_tensor(state["metric_steps"]))
