"""Curves over the task stream: one line per run, binned as the papers do, 95% band over seeds.

For each run and seed, the per-task values in ``metrics.csv`` are averaged over bins of
consecutive tasks; the line is the mean over seeds of these per-seed bin means and the shaded band
their Student-t 95% confidence interval (n − 1 degrees of freedom, no band with one seed), the
interval of ``summary.yaml``, or (``--band bootstrap``) the 95% bootstrap interval the reference's RL
figures draw (``lop/rl/plots/fig3.py``). Bins follow the papers: ``scr`` 2 change periods (20 000 examples,
``lop/slowly_changing_regression/plots/online_performance.py``), ``pmnist`` 1 task (60 000
examples); any other task about 50 bins over its stream.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
import seaborn as sns
from scipy import stats
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from .errors import UsageError
from .registry import TASKS
from .results import read_metrics, read_yaml
from .stats import mean_ci95

# Per-task plot settings until Task carries them: tasks per bin (the paper's bins), and the tasks
# whose every step shows ``batch_size`` fresh examples (so a task is steps × batch examples).
TARGET_BINS = 50

DIAGNOSTICS = ("dead_fraction", "dormant_fraction", "effective_rank", "stable_rank", "weight_magnitude")
DIAGNOSTIC_LABELS = {  # each task's docstring defines its diagnostics (e.g. icifar100's weights include biases)
    "dead_fraction": "dead units (fraction)",
    "dormant_fraction": "dormant units (fraction, all layers)",
    "effective_rank": "effective rank",
    "stable_rank": "99% stable rank",
    "weight_magnitude": "mean |weight|",
}


@dataclass(frozen=True)
class Run:
    """One run directory as read: its config, its per-seed streams, whether it finished."""

    directory: Path
    config: dict[str, Any]
    metrics: dict[str, dict[int, list[float]]]
    finished: bool

    @property
    def spec(self) -> dict[str, Any]:
        return self.config["protocol_spec"]

    @property
    def tasks_done(self) -> int:
        return min(len(v) for series in self.metrics.values() for v in series.values())

    @property
    def n_diverged(self) -> int:
        """Seeds marked diverged by the last task (``plastibench.divergence``)."""
        rows = self.metrics.get("diverged", {})
        return sum(1 for values in rows.values() if values and values[-1] == 1.0)

    def names(self) -> set[str]:
        """The names in ``metrics.csv`` and their layer means (``dead_fraction`` for ``dead_fraction/layer*``)."""
        return set(self.metrics) | {n.split("/")[0] for n in self.metrics if "/" in n}

    def series(self, metric: str) -> np.ndarray:
        """Values ``[seeds, tasks]``; an aggregate name is the mean over its layers, per seed."""
        if metric in self.metrics:
            n = self.tasks_done
            return np.array([self.metrics[metric][s][:n] for s in self.config["seeds"]], dtype=np.float64)
        layers = sorted(n for n in self.metrics if n.startswith(metric + "/"))
        return np.mean([self.series(n) for n in layers], axis=0)


def load_run(directory: Path) -> Run:
    """Read a run directory, finished or not; refuse one without config.yaml or metrics."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such run directory")
    if not (directory / "config.yaml").exists():
        raise UsageError(f"{directory} has no config.yaml: not a plastibench run directory")
    if not (directory / "metrics.csv").exists():
        raise UsageError(f"{directory} has no metrics.csv yet: the run has not saved its first checkpoint")
    metrics = read_metrics(directory / "metrics.csv")
    if not metrics:
        raise UsageError(f"{directory}/metrics.csv holds no finished task yet")
    return Run(directory, read_yaml(directory / "config.yaml"), metrics, (directory / "summary.yaml").exists())


def load_runs(directories: Sequence[Path]) -> list[Run]:
    """Distinct run directories, all of one task, protocol and protocol hash."""
    unique = list(dict.fromkeys(Path(d).resolve() for d in directories))
    runs = [load_run(d) for d in unique]
    kinds = {(r.config["task"], r.config["protocol"], r.config["protocol_hash"]) for r in runs}
    if len(kinds) > 1:
        listed = "; ".join(f"{r.directory}: {r.config['task']}/{r.config['protocol']} ({r.config['protocol_hash']})"
                           for r in runs)
        raise UsageError(f"runs of different tasks or protocols cannot share a plot: {listed}")
    return runs


def resolve_metrics(runs: Sequence[Run], metric: str | None) -> list[str]:
    """The panels to draw: the primary metric (None), every standard panel ("all"), or one name."""
    primary = runs[0].spec["metric"]
    available = set.intersection(*(r.names() for r in runs))
    if metric is None:
        return [primary]
    if metric == "all":
        return [m for m in (primary, *DIAGNOSTICS) if m in available]
    if metric not in available:
        raise UsageError(f"unknown metric {metric!r}; available: all, {', '.join(sorted(available))}")
    return [metric]


def bin_tasks(task: str, n_tasks: int) -> int:
    """Tasks per bin: the paper's bin for known tasks, else at most ``TARGET_BINS`` bins."""
    return TASKS.get(task).plot_bin_tasks or max(1, math.ceil(n_tasks / TARGET_BINS))


def examples_per_task(spec: dict[str, Any]) -> int | None:
    """Fresh examples per task where every step shows new ones, else None."""
    return spec["steps_per_task"] * spec["batch_size"] if TASKS.get(spec["task"]).online else None


def bin_means(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``values[seeds, tasks]`` -> (task number ending each bin, per-seed bin means ``[seeds, bins]``).

    Bins hold ``size`` consecutive tasks; a final partial bin (a run in progress) is kept.
    """
    n = values.shape[1]
    starts = np.arange(0, n, size)
    ends = np.minimum(starts + size, n)
    with np.errstate(all="ignore"), warnings.catch_warnings():  # a diverged seed's tasks are NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.stack([np.nanmean(values[:, a:b], 1) for a, b in zip(starts, ends)], axis=1)
    return ends, means


BANDS = ("t", "bootstrap")


def bootstrap_ci95(values: np.ndarray) -> tuple[float, float | None, float | None]:
    """Mean and 95% bootstrap CI of the mean, as ``lop/rl/plots/fig3.py`` (``scipy.stats.bootstrap``,
    its defaults: BCa, 9 999 resamples); the resampling is seeded (0) so a figure is reproducible,
    where the reference's is not. One value: no interval; all equal: the value itself."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    if np.all(values == values[0]):
        return mean, mean, mean
    ci = stats.bootstrap((values,), np.mean, confidence_level=0.95, rng=np.random.default_rng(0)).confidence_interval
    return mean, float(ci.low), float(ci.high)


def band(per_seed: np.ndarray, kind: str = "t") -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Mean over seeds of ``per_seed[seeds, bins]`` and its 95% CI (None with one seed): Student t
    (``kind`` "t"), or the reference RL plots' bootstrap (:func:`bootstrap_ci95`)."""
    ci = mean_ci95 if kind == "t" else bootstrap_ci95
    mean, low, high = zip(*(ci(column[np.isfinite(column)]) if np.isfinite(column).any()
                            else (np.nan, None, None) for column in per_seed.T))
    if per_seed.shape[0] < 2:
        return np.array(mean), None, None
    as_array = lambda v: np.array([np.nan if x is None else x for x in v], dtype=float)  # noqa: E731
    return np.array(mean), as_array(low), as_array(high)


def labels(runs: Sequence[Run]) -> list[str]:
    """Method names; runs sharing a method also show the hyperparameters in which they differ."""
    out = []
    counts = {len(r.config["seeds"]) for r in runs}
    for run in runs:
        method, hp = run.config["method"], run.config["hparams"]
        same = [r.config["hparams"] for r in runs if r.config["method"] == method]
        differ = [k for k in hp if len({repr(h.get(k)) for h in same}) > 1]
        label = method
        if len(same) > 1:
            label = f"{method} ({', '.join(f'{k}={hp[k]}' for k in differ)})" if differ else run.directory.name
        if len(counts) > 1:
            label += f", n={len(run.config['seeds'])}"
        if run.n_diverged:
            label += f" ({run.n_diverged} diverged, curves over the finite seeds)"
        if not run.finished:
            label += f" [unfinished: {run.tasks_done}/{run.spec['n_tasks']} tasks]"
        out.append(label)
    return out


def axis_label(metric: str, run: Run) -> str:
    """Y-axis text: the metric's meaning with its direction, its layer or "mean over layers"."""
    spec = run.spec
    if metric == spec["metric"]:
        better = "higher" if spec["higher_is_better"] else "lower"
        return f"{metric.replace('_', ' ')} ({better} is better)"
    base, _, layer = metric.partition("/")
    text = DIAGNOSTIC_LABELS.get(base, base.replace("_", " "))
    if layer:
        return f"{text}, {layer}"
    return text if metric in run.metrics else f"{text}, mean over layers"


def title(runs: Sequence[Run], kind: str = "t") -> str:
    c = runs[0].config
    counts = sorted({len(r.config["seeds"]) for r in runs})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    single = " (none for 1 seed)" if counts[0] == 1 else ""
    return (f"{c['task']} / {c['protocol']} (protocol {c['protocol_hash']}), n = {n} seeds\n"
            f"line: mean over seeds; band: 95% CI ({'Student t' if kind == 't' else 'bootstrap'}){single}")


def palette(n: int) -> list:
    """Seaborn's colour-blind palette, reordered so that orange and vermillion are far apart."""
    colours = sns.color_palette("colorblind", 10)
    order = [colours[i] for i in (0, 1, 2, 4, 3, 9, 5, 7, 6, 8)]
    return [order[i % len(order)] for i in range(n)]


def _x_label(size: int) -> str:
    return "task" if size == 1 else f"task (mean over bins of {size} tasks)"


def _draw_panel(ax, runs: Sequence[Run], names: Sequence[str], colours, metric: str, size: int,
                kind: str) -> None:
    for run, name, colour in zip(runs, names, colours):
        ends, per_seed = bin_means(run.series(metric), size)
        mean, low, high = band(per_seed, kind)
        ax.plot(ends, mean, color=colour, label=name, lw=1.8 if len(ends) <= 100 else 1.3,
                marker="o" if len(ends) <= 30 else None, ms=4)
        if low is not None:
            ax.fill_between(ends, low, high, color=colour, alpha=0.18, lw=0)
    ax.set_ylabel(axis_label(metric, runs[0]))
    ax.set_xlabel(_x_label(size))
    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _examples_axis(ax, per_task: int) -> None:
    top = ax.secondary_xaxis("top", functions=(lambda t: t * per_task, lambda e: e / per_task))
    top.xaxis.set_major_formatter(EngFormatter(sep=""))
    top.set_xlabel("examples")


def draw(runs: Sequence[Run], metrics: Sequence[str], output: Path, kind: str = "t") -> None:
    """Write the figure: one panel per metric and one cell for the legend; ``kind``: the band (:func:`band`)."""
    spec = runs[0].spec
    size = bin_tasks(spec["task"], spec["n_tasks"])
    per_task = examples_per_task(spec)
    names, colours = labels(runs), palette(len(runs))
    cells = 1 if len(metrics) == 1 else len(metrics) + 1  # several panels: one more cell for the legend
    ncols = 2 if cells == 4 else min(cells, 3)
    nrows = math.ceil(cells / ncols)
    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook")}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(10, 6) if cells == 1 else (5.2 * ncols, 4.4 * nrows), layout="constrained")
        FigureCanvasAgg(fig)  # drawn off-screen: no display, no pyplot state
        _check_format(fig, output)
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        for i, (ax, metric) in enumerate(zip(axes, metrics)):
            _draw_panel(ax, runs, names, colours, metric, size, kind)
            if per_task and i < ncols:
                _examples_axis(ax, per_task)
        for spare in axes[len(metrics):]:
            spare.axis("off")
        _legend(fig, axes[len(metrics)] if len(metrics) > 1 else None, axes[0], names)
        fig.suptitle(title(runs, kind))
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=150)


def _legend(fig, cell, ax, names: Sequence[str]) -> None:
    """In a spare grid cell, or below a single panel in as many columns as the labels' length allows."""
    handles, texts = ax.get_legend_handles_labels()
    if cell is not None:
        cell.legend(handles, texts, loc="center left", title="method", frameon=False)
        return
    ncols = max(1, min(len(names), 4, 100 // (max(map(len, names)) + 8)))
    fig.legend(handles, texts, loc="outside lower center", ncols=ncols, title="method", frameon=False)


def _check_format(fig, output: Path) -> None:
    kinds = fig.canvas.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in kinds:
        raise UsageError(f"-o {output}: choose a file ending in one of {', '.join('.' + k for k in sorted(kinds))}")
