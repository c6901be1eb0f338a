"""The method API: a plasticity method is a small class with hooks around one training loop.

Hooks, in the order the engine calls them:

* ``configure_network(net)``   once, may modify or replace the network;
* ``optimizer_spec(spec)``     once, may change the protocol's optimizer settings (e.g. L2);
* ``build_optimizer(params, spec)`` once, may choose or wrap the optimizer;
* ``on_task_start(task_index)`` at every task boundary, before the task's first step;
* ``loss_term(out, features)`` every step, an extra per-seed loss ``[S]`` added to the task loss;
* ``after_step(info)``         every step, after ``optimizer.step()``;
* ``on_period(info)``          between steps, after every ``event_period()``-th step (e.g. ReDo's
                               recycling every F steps), when the method declares a period.

Every tensor has a leading seed axis; a method must act on all seeds at once (masks and
``torch.where``, never a Python loop over seeds, never ``.item()`` inside a step).

The hooks that run inside a step (``loss_term``, ``after_step``, a network's forward) must be a pure
function of device state, so that the engine can capture a block of steps once and replay it (a CUDA
graph, a compiled block): read the step from ``info.step`` or ``run.clock`` (device tensors), update
state tensors in place (``copy_``, ``add_``, ``masked_fill_``; never rebind them), keep no Python
counter that changes from step to step, and draw random numbers from :mod:`plastibench.rng` keyed by
the device step. ``tests/test_conformance.py`` checks all of this for every registered method. A
method that cannot meet it sets ``capturable = False``; the engine then runs it eagerly and the run
records that it did.

Grid points that share the network shape can run as *members* of one batched model
(:mod:`plastibench.members`): the hyperparameters a method lists in ``vectorizable`` may then arrive
as per-member tensors ``[S]``, which it applies with ``members.per_member`` (a Python number passes
through unchanged). ``tests/test_members.py`` checks that every member equals its configuration run alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping

import torch
import yaml

from .clock import StepClock
from .members import check_members
from .optim import make_optimizer  # noqa: F401  (methods import it from here)
from .protocol import OptimizerSpec, Protocol


@dataclass
class RunContext:
    """What a method may read: seeds ``[S]`` (on the device), the protocol, the net and optimizer,
    ``network_factory(seeds)``, which builds the task's network initialised from other keys
    (resets draw fresh parameters with it), and the run's device ``clock`` (:mod:`plastibench.clock`)."""

    seeds: torch.Tensor
    task: str
    protocol: Protocol
    net: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    network_factory: Callable[[torch.Tensor], torch.nn.Module] | None = None
    clock: StepClock | None = None


@dataclass
class StepInfo:
    """One finished step: its global index, task index (a host int) and the hidden features.

    In ``after_step`` the step is the clock's device tensor (0-dim int64); in ``on_period``, which
    runs between steps, it is a host int."""

    step: torch.Tensor | int
    task_index: int
    features: list[torch.Tensor] = field(default_factory=list)


class HyperparameterError(ValueError):
    """A hyperparameter that names no hyperparameter, has the wrong type or lies outside its range."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The values a numeric hyperparameter may take: ``low`` to ``high`` (None: unbounded on that
    side), each end included unless ``low_open`` / ``high_open``. ``str`` reads "[0, 1]", "[0, 1)",
    "> 0", ">= 1"; NaN and ±inf are never in a range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"{'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "finite"

    def requirement(self) -> str:
        """``str(self)`` as the end of "it must be ...": "in [0, 1]", ">= 0", "finite"."""
        text = str(self)
        return f"in {text}" if text[0] in "[(" else text


# The ranges most hyperparameters take (``bounds = {"lr": POSITIVE, "beta1": UNIT_OPEN, ...}``).
UNIT = Range(0, 1)                        # [0, 1]: rates, fractions, probabilities
UNIT_OPEN = Range(0, 1, high_open=True)   # [0, 1): decay rates, betas, dropout's p
POSITIVE = Range(0, low_open=True)        # > 0: step sizes, eps, scales that divide
NON_NEGATIVE = Range(0)                   # >= 0: weight decay, λ, thresholds, noise scales
AT_LEAST_ONE = Range(1)                   # >= 1: periods, counts of steps or iterations


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` (a string from the command line, or a Python value) as the type of ``default``."""
    text = str(value).strip()
    try:
        if isinstance(default, bool):
            parsed = yaml.safe_load(text) if isinstance(value, str) else value
            if isinstance(parsed, bool):
                return parsed
        elif isinstance(default, int):
            number = float(text)
            if number.is_integer():
                return int(number)
        elif isinstance(default, float):
            return float(text)
        elif isinstance(default, str):
            return text
    except ValueError:
        pass
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
    raise HyperparameterError(f"{name} must be {kind}, got {value!r}")


class Method:
    """Base class: plain backprop with the protocol's optimizer. Subclasses override hooks.

    Class attributes every method sets: ``summary`` (one line), ``paper`` (citation),
    ``defaults`` (hyperparameters with their paper values) and ``task_defaults`` (per-task values
    from the paper's own configs, overriding ``defaults``). ``choices`` restricts string values;
    ``bounds`` gives every numeric (int or float) hyperparameter its :class:`Range`, which
    :meth:`hparams_for` enforces on defaults, task defaults and overrides alike (NaN and ±inf are
    refused for every float, bound or not).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    task_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # {other method: {task: {key: value}}}: this method's values on a task when composed with the
    # other (a paper's recipe for the pair, e.g. l2's weight decay in cbp+l2 on sant); see compose.py.
    composed_task_defaults: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    bounds: ClassVar[dict[str, Range]] = {}
    # What the method owns exclusively, so that a composition (``cbp+l2``) of two methods claiming
    # the same thing is refused. Vocabulary: "optimizer" (chooses the optimizer algorithm),
    # "weight_decay" (sets the optimizer's weight decay), "architecture" (changes the network's
    # layers or activations), "units" (re-initialises hidden units), "parameters" (rewrites all
    # parameters wholesale, e.g. a full reset or a re-parametrisation of the weights).
    claims: ClassVar[frozenset[str]] = frozenset()
    # False for a method whose step cannot be captured (a host sync or host state inside the step):
    # the engine then runs it eagerly whatever ``--capture`` says, and records that it did.
    capturable: ClassVar[bool] = True
    # The hyperparameters that may differ between the members of one batched model
    # (:mod:`plastibench.members`): such a value arrives as a per-member tensor ``[S]`` (float64, or
    # int64 for an int), which the method applies with ``members.per_member``. Element-wise values
    # only: never choices, shapes, periods or anything the host branches on.
    vectorizable: ClassVar[frozenset[str]] = frozenset()
    # True for a method that acts in ``on_task_start`` at a boundary between tasks (t ≥ 1): a stream
    # run with ``task.boundaries=hidden`` never calls it there, so such a method is refused at start-up.
    needs_boundaries: ClassVar[bool] = False

    def __init__(self, hparams: Mapping[str, Any], run: RunContext):
        self.hp = dict(hparams)
        self.run = run
        self.check_hparams(self.hp)
        check_members(self.hp, self.vectorizable, run.seeds.numel())

    @classmethod
    def hparameter_names(cls) -> set[str]:
        return set(cls.defaults).union(*cls.task_defaults.values())

    @classmethod
    def hparams_for(cls, task: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the task's paper values, then user overrides (validated and typed)."""
        hp = {**cls.defaults, **cls.task_defaults.get(task, {})}
        for key, value in (overrides or {}).items():
            if key not in hp:
                known = ", ".join(sorted(hp)) or "none"
                raise HyperparameterError(f"method {cls.name!r} has no hyperparameter {key!r} (it has: {known})")
            hp[key] = _coerce(key, value, hp[key])
            if key in cls.choices and hp[key] not in cls.choices[key]:
                raise HyperparameterError(f"{key} must be one of {', '.join(cls.choices[key])}, got {hp[key]!r}")
        cls.check_hparams(hp)
        return hp

    @classmethod
    def check_hparams(cls, hp: Mapping[str, Any]) -> None:
        """Raise :class:`HyperparameterError` (one line: method, key, value, range) for a float that is
        NaN or ±inf, or a number outside its declared ``bounds``."""
        for key, value in hp.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            bound = cls.bounds.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                must = f"; it must be {bound.requirement()}" if bound is not None else ""
                raise HyperparameterError(f"{cls.name}: {key}={value!r} is not a finite number{must}")
            if bound is not None and value not in bound:
                raise HyperparameterError(f"{cls.name}: {key}={value!r} is out of range; "
                                          f"it must be {bound.requirement()}")

    # ----- hooks -----
    def configure_network(self, net: torch.nn.Module) -> torch.nn.Module:
        return net

    def optimizer_spec(self, spec: OptimizerSpec) -> OptimizerSpec:
        return spec

    def build_optimizer(self, params: list[torch.Tensor], spec: OptimizerSpec) -> torch.optim.Optimizer:
        return make_optimizer(params, spec)

    def on_task_start(self, task_index: int) -> None:
        pass

    def loss_term(self, out: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor | None:
        return None

    def after_step(self, info: StepInfo) -> None:
        pass

    def event_period(self) -> int | None:
        """Steps between calls of ``on_period`` (None: never). The engine ends a captured block there."""
        return None

    def on_period(self, info: StepInfo) -> None:
        """Between steps, after every global step g with (g + 1) % event_period() == 0."""

    # ----- checkpointing of the method's own state -----
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def with_weight_decay(spec: OptimizerSpec, weight_decay: float) -> OptimizerSpec:
    """The protocol's optimizer with PyTorch's coupled L2 ``weight_decay`` set."""
    return replace(spec, weight_decay=weight_decay)
