"""Compositions of methods: ``cbp+l2`` is CBP and L2 at once (the paper's RL recipe).

``compose("cbp+l2")`` returns a :class:`~plastibench.method.Method` subclass whose hooks call each
part's hooks in the order written:

* ``configure_network`` and ``optimizer_spec`` are chained (each part gets the previous part's result;
  the part that changes the architecture configures the network first, the part that chooses the
  optimizer sets its spec first, so that ``cbp+adam`` with ``cbp.optimizer=adamgnt`` turns adam's
  Adam into AdamGnT);
* ``build_optimizer`` comes from the one part that overrides it (at most one may), else the
  protocol's optimizer from the chained spec;
* ``loss_term`` is the sum of the parts' terms; ``on_task_start`` and ``after_step`` run in order;
* ``state_dict`` is namespaced by part: ``{"cbp": {...}, "l2": {...}}``.

A part's task defaults are its own, updated by its ``composed_task_defaults`` for the other parts
(``l2`` takes weight decay 1e-4 in ``cbp+l2`` on ``sant``, 1e-3 alone, as the reference's configs).
Hyperparameters are namespaced ``PART.KEY`` (``cbp.replacement_rate``); an unqualified ``KEY`` is
accepted where exactly one part has it. Each part's ``choices``, ``bounds`` and ``vectorizable``
hold for its keys (``vectorizable`` as ``PART.KEY``, the keys of ``hparams_for``). Two parts that
claim the same thing (``Method.claims``: two optimizers, two weight decays, ...) or that both build
the optimizer cannot be composed: that is a :class:`CompositionError`, a usage error (exit status 2
on the command line).
"""

from __future__ import annotations

import functools
import inspect
import math
from itertools import combinations
from typing import Any, ClassVar, Mapping

import torch

from .errors import UsageError
from .method import HyperparameterError, Method, StepInfo, make_optimizer
from .protocol import OptimizerSpec
from .registry import METHODS

SEPARATOR = "+"

# What each claim means, for error messages ("both <meaning>").
CLAIM_MEANINGS = {
    "optimizer": "choose the optimizer algorithm",
    "weight_decay": "set the optimizer's weight decay",
    "architecture": "change the network's layers or activations",
    "units": "re-initialise hidden units",
    "parameters": "rewrite all parameters wholesale",
}


class CompositionError(UsageError):
    """Methods that cannot be composed (they claim the same thing); a usage error, exit status 2."""


def overrides_build_optimizer(cls: type[Method]) -> bool:
    return cls.build_optimizer is not Method.build_optimizer


def _check(name: str, parts: list[type[Method]]) -> None:
    for a, b in combinations(parts, 2):
        for claim in sorted(a.claims & b.claims):
            meaning = CLAIM_MEANINGS.get(claim, f"claim {claim!r}")
            raise CompositionError(f"cannot compose {name}: {a.name} and {b.name} both {meaning} "
                                   f"(claim {claim!r})")
    builders = [p.name for p in parts if overrides_build_optimizer(p)]
    if len(builders) > 1:
        raise CompositionError(f"cannot compose {name}: {' and '.join(builders)} both build the optimizer "
                               "(build_optimizer); at most one part may")


def _doc(cls: type[Method]) -> str:
    return inspect.getdoc(inspect.getmodule(cls)) or cls.summary


class Composite(Method):
    """Base of every composite; ``parts`` are the component method classes in order."""

    parts: ClassVar[tuple[type[Method], ...]] = ()

    # ----- hyperparameters, namespaced "part.key" -----
    @classmethod
    def resolve_key(cls, key: str) -> str | None:
        """``key`` as a namespaced name: itself if namespaced and known; an unqualified key that
        exactly one part has becomes ``part.key``; None if no part has it. Ambiguous keys raise."""
        if key in cls.hparameter_names():
            return key
        owners = [p.name for p in cls.parts if key in p.hparameter_names()]
        if len(owners) > 1:
            raise HyperparameterError(f"{key} is ambiguous in {cls.name}: write "
                                      f"{' or '.join(f'{o}.{key}' for o in owners)}")
        return f"{owners[0]}.{key}" if owners else None

    @classmethod
    def hparams_for(cls, task: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resolved = {}
        for key, value in (overrides or {}).items():
            resolved[cls.resolve_key(key) or key] = value
        return super().hparams_for(task, resolved)

    def __init__(self, hparams: Mapping[str, Any], run):
        super().__init__(hparams, run)
        self.capturable = all(part.capturable for part in self.parts)
        self.components: list[Method] = []
        for part in self.parts:
            prefix = part.name + "."
            own = {k[len(prefix):]: v for k, v in self.hp.items() if k.startswith(prefix)}
            self.components.append(part(own, run))

    # ----- hooks, each part in order -----
    def configure_network(self, net: torch.nn.Module) -> torch.nn.Module:
        # The part that changes the architecture goes first, so that every other part binds to the
        # network that trains (``cbp+crelu`` tests CReLU units, not the discarded ReLU net's).
        ordered = sorted(self.components, key=lambda c: "architecture" not in c.claims)
        for c in ordered:
            net = c.configure_network(net)
        return net

    def optimizer_spec(self, spec: OptimizerSpec) -> OptimizerSpec:
        # The part that chooses the optimizer goes first; the others adjust its choice (weight decay,
        # cbp's AdamGnT), in the order written.
        for c in sorted(self.components, key=lambda c: "optimizer" not in c.claims):
            spec = c.optimizer_spec(spec)
        return spec

    def build_optimizer(self, params: list[torch.Tensor], spec: OptimizerSpec) -> torch.optim.Optimizer:
        for c in self.components:
            if overrides_build_optimizer(type(c)):
                return c.build_optimizer(params, spec)
        return make_optimizer(params, spec)

    def on_task_start(self, task_index: int) -> None:
        for c in self.components:
            c.on_task_start(task_index)

    def loss_term(self, out: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor | None:
        total = None
        for c in self.components:
            term = c.loss_term(out, features)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_step(self, info: StepInfo) -> None:
        for c in self.components:
            c.after_step(info)

    def event_period(self) -> int | None:
        """The gcd of the parts' periods, so that every part's event falls on a segment end."""
        periods = [p for p in (c.event_period() for c in self.components) if p]
        return math.gcd(*periods) if periods else None

    def on_period(self, info: StepInfo) -> None:
        for c in self.components:
            period = c.event_period()
            if period and (info.step + 1) % period == 0:
                c.on_period(info)

    def state_dict(self) -> dict[str, Any]:
        return {c.name: c.state_dict() for c in self.components}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for c in self.components:
            c.load_state_dict(state.get(c.name, {}))


def split(name: str) -> list[str]:
    return [part.strip() for part in name.split(SEPARATOR)]


def compose(name: str) -> type[Composite]:
    """The composite method class for ``"a+b+..."`` (parts from the registry, in that order; one
    class per composition, so ``compose("cbp+l2") is compose("cbp + l2")``).

    Raises :class:`~plastibench.registry.UnknownName` for an unknown part and
    :class:`CompositionError` for parts that cannot be combined.
    """
    names = split(name)
    if len(names) < 2 or not all(names):
        raise CompositionError(f"cannot compose {name!r}: write two or more method names joined by "
                               f"'{SEPARATOR}', e.g. cbp+l2")
    return _compose(SEPARATOR.join(names))


@functools.lru_cache(maxsize=None)
def _compose(canonical: str) -> type[Composite]:
    names = split(canonical)
    if len(set(names)) < len(names):
        raise CompositionError(f"cannot compose {canonical}: a method appears twice")
    parts = [METHODS.get(n) for n in names]
    _check(canonical, parts)

    def namespaced(values: Mapping[str, Any], part: type[Method]) -> dict[str, Any]:
        return {f"{part.name}.{k}": v for k, v in values.items()}

    def task_values(part: type[Method], task: str) -> dict[str, Any]:
        """``part``'s task defaults, then its values for this composition (``composed_task_defaults``)."""
        values = dict(part.task_defaults.get(task, {}))
        for other in parts:
            values.update(part.composed_task_defaults.get(other.name, {}).get(task, {}))
        return namespaced(values, part)

    tasks = sorted(set().union(*(p.task_defaults for p in parts),
                               *(d for p in parts for q in parts for d in [p.composed_task_defaults.get(q.name, {})])))
    doc = "\n\n".join(
        [f"Composition {canonical}: the hooks of {', '.join(names)} run in this order (networks and "
         "optimizer settings chained, loss terms summed, after-step and task-start actions one after "
         "the other). Hyperparameters are PART.KEY (an unqualified KEY where one part alone has it)."]
        + [f"=== {p.name} ===\n{_doc(p)}" for p in parts])
    papers = list(dict.fromkeys(ref.strip() for p in parts for ref in p.paper.split(";") if ref.strip()))
    attrs = {
        "__doc__": doc,
        "__module__": __name__,
        "name": canonical,
        "parts": tuple(parts),
        "summary": " + ".join(f"{p.name} ({p.summary})" for p in parts),
        "paper": "; ".join(papers),
        "defaults": {k: v for p in parts for k, v in namespaced(p.defaults, p).items()},
        "task_defaults": {t: {k: v for p in parts for k, v in task_values(p, t).items()} for t in tasks},
        "choices": {k: v for p in parts for k, v in namespaced(p.choices, p).items()},
        "bounds": {k: v for p in parts for k, v in namespaced(p.bounds, p).items()},
        "claims": frozenset().union(*(p.claims for p in parts)),
        "vectorizable": frozenset(f"{p.name}.{k}" for p in parts for k in p.vectorizable),
        "needs_boundaries": any(p.needs_boundaries for p in parts),
    }
    return type(f"Composite[{canonical}]", (Composite,), attrs)


def accepts(cls: type[Method], key: str) -> bool:
    """Whether ``--set KEY=V`` names a hyperparameter of ``cls`` (a composite resolves unqualified
    keys; an ambiguous one raises :class:`HyperparameterError`)."""
    if key in cls.hparameter_names():
        return True
    return issubclass(cls, Composite) and cls.resolve_key(key) is not None


def describe(cls: type[Method]) -> str:
    """What ``plastibench show method`` prints: the module docstring, or a composite's combined one."""
    if issubclass(cls, Composite):
        return inspect.getdoc(cls) or cls.summary
    return _doc(cls)


METHODS.composer = compose  # METHODS.get("cbp+l2") answers compositions
