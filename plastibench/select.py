"""Tuning done honestly: choose on tune seeds, report on fresh seeds, and record the budget.

``sweep --select`` runs the spec's grid on ``tune_seeds``. Per (task, protocol, method) it then
chooses one grid point by the spec's ``select`` rule and runs that configuration on
``report_seeds``, which the choice never saw. The rule (one for now, stated in full in every
record):

    rule: best-mean          the best mean, over the tune seeds, of each seed's score: the mean
                             per-task metric over the last ``last_fraction`` of tasks (default:
                             the protocol's own window); best = the protocol's direction; ties
                             go to the first grid point in spec order
    last_fraction: 0.1       optional

The choices go to ``OUT/_sweeps/NAME/selected.yaml``; each report run directory gets
``selection.yaml`` (rule, tuning budget = the number of configurations tried for that method,
tune seeds, every candidate's score), which ``plastibench leaderboard submit`` records in the entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .results import ResultError, load_summary, summary_over_last, write_yaml
from .runner import plan
from .status import locate
from .sweep import Configuration, Spec

RULES = ("best-mean",)


def rule_of(spec: Spec) -> tuple[str, float | None]:
    """(rule, last_fraction) of a spec's ``select`` mapping, checked."""
    select = dict(spec.select)
    rule = select.pop("rule", "best-mean")
    fraction = select.pop("last_fraction", None)
    if select:
        raise UsageError(f"select: unknown key {sorted(select)[0]!r}; select has rule and last_fraction")
    if rule not in RULES:
        raise UsageError(f"select: rule {rule!r} is not one of {', '.join(RULES)}")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise UsageError(f"select: last_fraction must be a number in (0, 1], got {fraction!r}")
    return rule, None if fraction is None else float(fraction)


def describe_rule(spec: Spec, summary: dict[str, Any]) -> str:
    _, fraction = rule_of(spec)
    window = "the protocol's window" if fraction is None else f"the last {fraction:g} of tasks"
    direction = "highest" if summary["higher_is_better"] else "lowest"
    return (f"best-mean: the {direction} mean over tune seeds {spec.tune_seeds} of each seed's mean "
            f"per-task {summary['metric']} over {window}; ties to the first grid point")


def score(directory: Path, fraction: float | None) -> dict[str, Any]:
    return load_summary(directory, rewrite=False) if fraction is None else summary_over_last(directory, fraction)


def select_and_report(spec: Spec, out: Path, tuned: Sequence[Configuration]) -> list[Configuration]:
    """Choose per (task, protocol, method) among the finished tune configurations; write the
    records; return the chosen configurations planned on the report seeds."""
    _, fraction = rule_of(spec)
    by_method: dict[tuple, list[Configuration]] = {}
    for c in tuned:
        config = c.plan.config
        by_method.setdefault((config["task"], config["protocol"], c.plan.method), []).append(c)
    choices, report = [], []
    for (task, protocol, method), candidates in by_method.items():
        scored, where = [], {}
        for c in candidates:
            directory = locate(c.plan)  # a task with data names its directory once the data loaded
            try:
                if directory is None:
                    raise ResultError("it never ran")
                scored.append((c, score(directory, fraction)))
                where[id(c)] = directory
            except ResultError as exc:
                raise UsageError(f"cannot select {method} on {task}/{protocol}: {c.label} has no finished "
                                 f"result ({exc})") from None
        higher = scored[0][1]["higher_is_better"]
        best = (max if higher else min)(scored, key=lambda cs: cs[1]["mean"])  # first of equals wins
        chosen = best[0]
        p = plan(method, task, protocol, spec.report_seeds, chosen.overrides, out, chosen.options)
        record = {
            "spec": spec.name, "task": task, "protocol": protocol, "method": method,
            "rule": describe_rule(spec, best[1]), "tuning_budget": len(candidates),
            "tune_seeds": spec.tune_seeds, "report_seeds": spec.report_seeds, "chosen": dict(chosen.point),
            "candidates": [{"point": dict(c.point), "mean": s["mean"], "directory": str(where[id(c)])}
                           for c, s in scored],
        }
        choices.append(record)
        report.append(Configuration(p, dict(chosen.point), chosen.overrides, chosen.options, record))
    write_yaml(Path(out) / "_sweeps" / spec.name / "selected.yaml", {"choices": choices})
    return report


def write_selection(configurations: Sequence[Configuration]) -> None:
    """``selection.yaml`` in each chosen configuration's run directory (once it exists)."""
    for c in configurations:
        directory = locate(c.plan)
        if c.selection is not None and directory is not None and directory.exists():
            write_yaml(directory / "selection.yaml", c.selection)
