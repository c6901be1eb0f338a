"""``plastibench plot --by transition``: each method's score against a stream setting.

For ``transition`` the x value of a run is N of ``task.transition=linear:N`` (``abrupt`` is 0). A
run's y value is the protocol's score per seed (recomputed from ``metrics.csv`` over the tasks it
finished, as ``plastibench.results.summary_at_task``), drawn as the mean over seeds with its Student-t
95% CI (none for one seed). Runs of one method with the same hyperparameters form a line, ordered
by x. The runs must share task and protocol and differ in nothing but the setting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import UsageError
from .plots import Run, _check_format, axis_label, palette
from .protocol import Protocol
from .results import protocol_from_spec, summary_at_task
from .stats import mean_ci95
from .task import transition_steps

SETTINGS: dict[str, tuple[Callable[[Protocol], int], str]] = {
    "transition": (transition_steps, "transition length N in steps (task.transition=linear:N; 0 = abrupt)"),
}


def _without(protocol: Protocol, key: str) -> str:
    """The protocol's hash with setting ``key`` removed: equal for runs that differ only in it."""
    return dataclasses.replace(protocol, settings={k: v for k, v in protocol.settings.items() if k != key}).hash


def lines(runs: Sequence[Run], by: str) -> dict[str, list[tuple[int, float, float | None, float | None]]]:
    """Label -> points (x, mean, CI low, CI high) sorted by x, one point per run."""
    if by not in SETTINGS:
        raise UsageError(f"--by {by!r}: choose one of {', '.join(SETTINGS)}")
    x_of = SETTINGS[by][0]
    protocols = [protocol_from_spec(r.spec) for r in runs]
    if len({(r.config["task"], r.config["protocol"], _without(p, by)) for r, p in zip(runs, protocols)}) > 1:
        listed = "; ".join(f"{r.directory}: {r.config['task']}/{r.config['protocol']}" for r in runs)
        raise UsageError(f"--by {by}: the runs must share task and protocol and differ only in {by}: {listed}")
    out: dict[str, list] = {}
    for run, protocol in zip(runs, protocols):
        scores = list(summary_at_task(run.directory, run.tasks_done)["per_seed"].values())
        label, hp = run.config["method"], run.config["hparams"]
        same = [r.config["hparams"] for r in runs if r.config["method"] == label]
        differ = [k for k in hp if len({repr(h.get(k)) for h in same}) > 1]
        if differ:
            label += " (" + ", ".join(f"{k}={hp[k]}" for k in differ) + ")"
        out.setdefault(label, []).append((x_of(protocol), *mean_ci95(scores)))
    for label, points in out.items():
        xs = [p[0] for p in points]
        if len(set(xs)) < len(xs):
            raise UsageError(f"--by {by}: {label} has two runs at {by} {max(xs, key=xs.count)}")
        points.sort()
    return out


def draw(runs: Sequence[Run], by: str, output: Path) -> None:
    """One panel: each method's score (mean, 95% CI bars) against the setting."""
    data = lines(runs, by)
    c = runs[0].config
    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook")}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(8, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        _check_format(fig, output)
        ax = fig.subplots()
        for (label, points), colour in zip(data.items(), palette(len(data))):
            x, mean, low, high = (np.array([p[i] if p[i] is not None else np.nan for p in points], dtype=float)
                                  for i in range(4))
            bars = np.nan_to_num(np.vstack([mean - low, high - mean]))  # no bar where there is no CI
            ax.errorbar(x, mean, yerr=bars, color=colour, label=label, marker="o", ms=5, capsize=4, lw=1.8)
        ax.set_xlabel(SETTINGS[by][1])
        ax.set_ylabel(f"score: {axis_label(c['protocol_spec']['metric'], runs[0])}")
        ax.legend(title="method", frameon=False)
        counts = sorted({len(r.config["seeds"]) for r in runs})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        fig.suptitle(f"{c['task']} / {c['protocol']} by {by}, n = {n} seeds\n"
                     "point: mean over seeds of the protocol's score; bar: 95% CI (Student t)")
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=150)
