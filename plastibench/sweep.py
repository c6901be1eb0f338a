"""A sweep spec (YAML) -> the configurations it names -> the batched models that compute them.

A spec names tasks, protocols, methods (compositions too), a hyperparameter grid and seeds::

    tasks: [scr]
    protocols: [smoke]
    methods: [bp, cbp]
    grid:
      cbp.replacement_rate: [1.0e-4, 1.0e-3]   # METHOD.KEY or KEY, as in --set
      task.rng: [default, reference]           # task options split protocols (their hash changes)
    set: {cbp.decay_rate: 0.99}                # fixed overrides, as --set
    seeds: 0-2                                 # as --seeds; default: each protocol's own
    out: runs                                  # --out overrides it

A grid key applies to the methods that have it (``cbp.KEY`` also reaches ``cbp+l2``), so the spec
above is three configurations: bp, and cbp at two rates. Each configuration is exactly what
``plastibench run`` with the same ``--set`` computes, in the same content-addressed directory, so
``run`` and ``sweep`` share results. Configurations of one method, task, protocol and seeds that
differ only in hyperparameters the method declares ``vectorizable`` form one *batch*: one batched
model whose members are (configuration, seed) pairs (:mod:`plastibench.members`).

Tuning: ``tune_seeds`` and ``report_seeds`` (both as --seeds) and ``select`` (see
:mod:`plastibench.select`) make ``sweep --select`` run the grid on the tune seeds, choose one
configuration per (task, protocol, method) by the rule, and run it on the report seeds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import UsageError
from .registry import METHODS, TASKS, UnknownName
from .results import config_hash
from .runner import Plan, parse_overrides, parse_seeds, plan

SPEC_KEYS = {"name", "tasks", "protocols", "methods", "grid", "set", "seeds", "out", "tune_seeds",
             "report_seeds", "select"}


@dataclass
class Spec:
    """A parsed sweep spec; ``set`` and ``grid`` values are kept as the strings ``--set`` takes."""

    name: str
    tasks: list[str]
    protocols: list[str]
    methods: list[str]
    grid: dict[str, list[str]] = field(default_factory=dict)
    set: dict[str, str] = field(default_factory=dict)
    seeds: str | None = None
    out: Path | None = None
    tune_seeds: str | None = None
    report_seeds: str | None = None
    select: dict[str, Any] = field(default_factory=dict)


def _as_text(value: Any) -> str:
    """A YAML scalar as ``--set`` would have written it (``1.0e-4`` -> ``"0.0001"``, True -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _names(data: Mapping[str, Any], key: str, source: str) -> list[str]:
    value = data.get(key)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{source}: '{key}' must be a non-empty list of names, e.g. {key}: [a, b]")
    return value


def _seeds(data: Mapping[str, Any], key: str, source: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    text = _as_text(value)
    try:
        parse_seeds(text, 0)
    except UsageError as exc:
        raise UsageError(f"{source}: {key}: {exc.args[0].replace('--seeds', 'seeds')}") from None
    return text


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Check a spec's structure and names; :class:`UsageError` (one line, naming the key) otherwise."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a sweep spec is a YAML mapping with tasks, protocols, methods (and grid, "
                         "seeds); see examples/sweep.yaml")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r}; a spec has {', '.join(sorted(SPEC_KEYS))}")
    grid = data.get("grid") or {}
    fixed = data.get("set") or {}
    for key, value in (("grid", grid), ("set", fixed)):
        if not isinstance(value, dict):
            raise UsageError(f"{source}: '{key}' must be a mapping of KEY: value" +
                             ("s (a list)" if key == "grid" else ""))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{source}: grid {key}: give a non-empty list of values, e.g. {key}: [1, 2]")
        if len(set(map(_as_text, values))) != len(values):
            raise UsageError(f"{source}: grid {key}: a value is listed twice")
    select = data.get("select") or {}
    if not isinstance(select, dict):
        raise UsageError(f"{source}: 'select' must be a mapping, e.g. select: {{rule: best-mean}}")
    spec = Spec(
        name=str(data.get("name") or Path(source).stem),
        tasks=_names(data, "tasks", source),
        protocols=_names(data, "protocols", source),
        methods=_names(data, "methods", source),
        grid={str(k): [_as_text(v) for v in values] for k, values in grid.items()},
        set={str(k): _as_text(v) for k, v in fixed.items()},
        seeds=_seeds(data, "seeds", source),
        out=None if data.get("out") is None else Path(str(data["out"])),
        tune_seeds=_seeds(data, "tune_seeds", source),
        report_seeds=_seeds(data, "report_seeds", source),
        select=dict(select),
    )
    for name in spec.methods:
        try:
            METHODS.get(name)
        except UnknownName as exc:
            raise UsageError(f"{source}: {exc.args[0]}") from None
    for name in spec.tasks:
        try:
            TASKS.get(name)
        except UnknownName as exc:
            raise UsageError(f"{source}: {exc.args[0]}") from None
    return spec


def load_spec(path: Path) -> Spec:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the sweep spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_spec(data, str(path))


def _applies(key: str, method: str) -> bool:
    """Whether ``--set key=...`` would reach ``method`` (an unknown key reaches none)."""
    try:
        return bool(parse_overrides([f"{key}=0"], [method])[method])
    except UsageError:
        return False


@dataclass
class Configuration:
    """One configuration of a sweep: a :class:`runner.Plan`, the grid point that made it, the
    method overrides and task options it was planned with, and (for a tuned choice run on the
    report seeds) the record of its selection."""

    plan: Plan
    point: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """``cbp scr/smoke cbp.replacement_rate=0.001``: the method, task/protocol and grid point."""
        config = self.plan.config
        return " ".join([self.plan.method, f"{config['task']}/{config['protocol']}",
                         *(f"{k}={v}" for k, v in self.point.items())])


def expand(spec: Spec, out: Path, seeds: str | None = None) -> list[Configuration]:
    """Every configuration of the spec, in spec order (``seeds`` overrides the spec's)."""
    seeds = spec.seeds if seeds is None else seeds
    task_grid = {k: v for k, v in spec.grid.items() if k.startswith("task.")}
    method_grid = {k: v for k, v in spec.grid.items() if not k.startswith("task.")}
    fixed_task = {k[len("task."):]: v for k, v in spec.set.items() if k.startswith("task.")}
    fixed_method = {k: v for k, v in spec.set.items() if not k.startswith("task.")}
    for key in method_grid:
        if not any(_applies(key, m) for m in spec.methods):
            raise UsageError(f"grid {key}: none of {', '.join(spec.methods)} has this hyperparameter; "
                             "`plastibench show method NAME` lists them")
    configurations, seen = [], set()
    for task, protocol, method in itertools.product(spec.tasks, spec.protocols, spec.methods):
        fixed = {k: v for k, v in fixed_method.items() if _applies(k, method)}
        keys = [k for k in method_grid if _applies(k, method)]
        for task_point in _points(task_grid):
            options = {**fixed_task, **{k[len("task."):]: v for k, v in task_point.items()}}
            for point in _points({k: method_grid[k] for k in keys}):
                items = [f"{k}={v}" for k, v in {**fixed, **point}.items()]
                try:
                    overrides = parse_overrides(items, [method])[method]
                    p = plan(method, task, protocol, seeds, overrides, out, options)
                except UnknownName as exc:
                    raise UsageError(str(exc.args[0])) from None
                except UsageError as exc:
                    raise UsageError(f"{method} on {task}/{protocol}: {exc.args[0]}") from None
                identity = config_hash({k: v for k, v in p.config.items() if k != "data"})
                if identity not in seen:  # grid values that coincide (1e-4 and 0.0001) are one configuration
                    seen.add(identity)
                    configurations.append(Configuration(p, {**task_point, **point}, overrides, options))
    return configurations


def _points(grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """The cartesian product of a grid, as dicts (one empty point for an empty grid)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def batch_key(c: Configuration) -> tuple:
    """What configurations must share to be members of one batched model: everything but the values
    of the hyperparameters their method declares vectorizable."""
    config = c.plan.config
    vectorizable = getattr(METHODS.get(c.plan.method), "vectorizable", frozenset())
    fixed = tuple(sorted((k, repr(v)) for k, v in config["hparams"].items() if k not in vectorizable))
    return (config["task"], config["protocol_hash"], c.plan.method, tuple(config["seeds"]), fixed,
            repr(sorted(config.get("task_options", {}).items())), config["code_digest"])


def batches(configurations: Sequence[Configuration], together: bool = True) -> list[list[Configuration]]:
    """Group configurations into batched models, in first-seen order (``together=False``: one each)."""
    if not together:
        return [[c] for c in configurations]
    groups: dict[tuple, list[Configuration]] = {}
    for c in configurations:
        groups.setdefault(batch_key(c), []).append(c)
    return list(groups.values())
