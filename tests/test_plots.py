"""``plastibench plot``: binning, the Student-t band, labels, the figures and the usage errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from plastibench import plots
from plastibench.cli_contrib import new_method_command, plot_command
from plastibench.registry import TASKS
from plastibench.results import run_config, run_dir, write_metrics, write_yaml
from plastibench.runner import execute, plan

app = typer.Typer()
app.command("plot")(plot_command)
app.command("new-method")(new_method_command)


def invoke(*args: str):
    return CliRunner().invoke(app, ["plot", *args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_exit(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return flat(result.output)


def fake_run(root: Path, method: str, values: dict[str, np.ndarray], *, hparams=None, task: str = "scr",
             protocol: str = "smoke", finished: bool = True) -> Path:
    """A run directory with hand-made ``values[metric][task, seed]``; summary.yaml only if finished."""
    proto = TASKS.get(task).protocol(protocol)
    n_seeds = next(iter(values.values())).shape[1]
    config = run_config(method, hparams or {}, proto, list(range(n_seeds)))
    directory = run_dir(root, config)
    write_yaml(directory / "config.yaml", config)
    n_tasks = next(iter(values.values())).shape[0]
    write_metrics(directory / "metrics.csv", config["seeds"],
                  [{name: v[t] for name, v in values.items()} for t in range(n_tasks)])
    if finished:
        write_yaml(directory / "summary.yaml", {"method": method})
    return directory


def diagnostics(n_tasks: int, n_seeds: int, offset: float = 0.0) -> dict[str, np.ndarray]:
    grid = np.arange(n_tasks * n_seeds, dtype=float).reshape(n_tasks, n_seeds) + offset
    return {"squared_error": grid, "dead_fraction/layer0": grid / 100, "dead_fraction/layer1": grid / 50,
            "effective_rank/layer0": grid + 1, "stable_rank/layer0": grid + 2, "weight_magnitude": grid / 10}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> list[Path]:
    """Real finished smoke runs of bp and cbp on scr, 3 seeds."""
    out = tmp_path_factory.mktemp("runs")
    plans = [plan(m, "scr", "smoke", "0-2", {}, out) for m in ("bp", "cbp")]
    for p in plans:
        execute(p, device=torch.device("cpu"))
    return [p.directory for p in plans]


def assert_png(path: Path, min_size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size


# ----- the figures -----

def test_plot_writes_the_primary_metric(smoke_runs, tmp_path):
    out = tmp_path / "figs" / "curve.png"
    text = assert_exit(invoke(*map(str, smoke_runs), "-o", str(out)), 0)
    assert f"wrote {out}" in text and "squared_error" in text and "2 runs" in text
    assert_png(out, (1200, 700))


def test_plot_all_draws_every_diagnostic(smoke_runs, tmp_path):
    out = tmp_path / "all.png"
    text = assert_exit(invoke(*map(str, smoke_runs), "--metric", "all", "-o", str(out)), 0)
    assert "squared_error, dead_fraction, effective_rank, stable_rank, weight_magnitude" in text
    assert_png(out, (2000, 1100))


def test_plot_one_layer_metric_and_svg(smoke_runs, tmp_path):
    out = tmp_path / "dead.svg"
    assert_exit(invoke(str(smoke_runs[0]), "--metric", "dead_fraction/layer0", "-o", str(out)), 0)
    assert out.read_text().lstrip().startswith("<?xml")


def test_unfinished_run_is_plotted_as_far_as_it_went(tmp_path):
    run = fake_run(tmp_path, "bp", diagnostics(2, 3), finished=False)
    out = tmp_path / "progress.png"
    text = assert_exit(invoke(str(run), "-o", str(out)), 0)
    assert "unfinished" in text and "2 of 4 tasks" in text
    assert out.stat().st_size > 0


# ----- the numbers behind the curves -----

def test_bin_means_equal_a_hand_computation():
    values = np.array([[1.0, 3.0, 5.0, 7.0, 10.0],
                       [2.0, 2.0, 4.0, 8.0, -1.0]])
    ends, means = plots.bin_means(values, 2)
    np.testing.assert_array_equal(ends, [2, 4, 5])  # the last, partial bin is kept
    np.testing.assert_allclose(means, [[2.0, 6.0, 10.0], [2.0, 6.0, -1.0]])
    ends, means = plots.bin_means(values, 1)
    np.testing.assert_array_equal(ends, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(means, values)


def test_band_equals_scipy_t_interval():
    per_seed = np.array([[1.0, 10.0], [2.0, 14.0], [4.0, 9.0], [7.0, 11.0]])  # 4 seeds, 2 bins
    mean, low, high = plots.band(per_seed)
    for b in range(2):
        x = per_seed[:, b]
        lo, hi = scipy.stats.t.interval(0.95, df=3, loc=x.mean(), scale=scipy.stats.sem(x))
        assert mean[b] == pytest.approx(x.mean()) and low[b] == pytest.approx(lo) and high[b] == pytest.approx(hi)
    mean, low, high = plots.band(per_seed[:1])
    np.testing.assert_array_equal(mean, per_seed[0])
    assert low is None and high is None  # one seed: no band


def test_bootstrap_band_equals_scipy_bootstrap_per_bin(smoke_runs, tmp_path):
    per_seed = np.array([[1.0, 10.0], [2.0, 14.0], [4.0, 9.0], [7.0, 11.0]])
    mean, low, high = plots.band(per_seed, "bootstrap")
    for b in range(2):
        ci = scipy.stats.bootstrap((per_seed[:, b],), np.mean, confidence_level=0.95,
                                   rng=np.random.default_rng(0)).confidence_interval
        assert (mean[b], low[b], high[b]) == pytest.approx((per_seed[:, b].mean(), ci.low, ci.high))
    out = tmp_path / "boot.png"
    assert "bootstrap" not in plots.title(plots.load_runs(smoke_runs))
    assert_exit(invoke(*map(str, smoke_runs), "-o", str(out), "--band", "bootstrap"), 0)
    assert_exit(invoke(*map(str, smoke_runs), "-o", str(out), "--band", "normal"), 2)


def test_bins_follow_the_papers(monkeypatch):
    scr, pmnist = TASKS.get("scr").protocol("paper"), TASKS.get("pmnist").protocol("paper")
    assert plots.bin_tasks("scr", scr.n_tasks) * plots.examples_per_task(scr.to_dict()) == 20_000
    assert plots.bin_tasks("pmnist", pmnist.n_tasks) * plots.examples_per_task(pmnist.to_dict()) == 60_000
    # a task that sets no bin of its own gets at most 50 bins; one that is not online no examples axis
    monkeypatch.setattr(TASKS.get("scr"), "plot_bin_tasks", None)
    monkeypatch.setattr(TASKS.get("scr"), "online", False)
    assert plots.bin_tasks("scr", 5000) == 100 and plots.bin_tasks("scr", 120) == 3
    assert plots.bin_tasks("scr", 30) == 1
    assert plots.examples_per_task(scr.to_dict()) is None


def test_layer_aggregate_is_the_mean_over_layers(tmp_path):
    values = diagnostics(4, 3)
    run = plots.load_run(fake_run(tmp_path, "bp", values))
    expected = ((values["dead_fraction/layer0"] + values["dead_fraction/layer1"]) / 2).T
    np.testing.assert_allclose(run.series("dead_fraction"), expected)
    np.testing.assert_array_equal(run.series("weight_magnitude"), values["weight_magnitude"].T)
    assert {"dead_fraction", "dead_fraction/layer1", "squared_error"} <= run.names()


def test_labels_show_hyperparameters_only_where_a_method_repeats(tmp_path):
    a = fake_run(tmp_path, "cbp", diagnostics(4, 3), hparams={"replacement_rate": 1e-4, "decay_rate": 0.99})
    b = fake_run(tmp_path, "cbp", diagnostics(4, 3, 1.0), hparams={"replacement_rate": 1e-3, "decay_rate": 0.99})
    c = fake_run(tmp_path, "bp", diagnostics(2, 2), finished=False)
    names = plots.labels(plots.load_runs([a, b, c]))
    assert names == ["cbp (replacement_rate=0.0001), n=3", "cbp (replacement_rate=0.001), n=3",
                     "bp, n=2 [unfinished: 2/4 tasks]"]
    axis = plots.axis_label("squared_error", plots.load_run(a))
    assert axis == "squared error (lower is better)"
    assert "mean over layers" in plots.axis_label("dead_fraction", plots.load_run(a))


# ----- usage errors: exit 2 with a message -----

def test_runs_of_different_tasks_or_protocols_are_refused(smoke_runs, tmp_path):
    other = fake_run(tmp_path, "bp", diagnostics(4, 3), protocol="short")
    text = assert_exit(invoke(str(smoke_runs[0]), str(other), "-o", str(tmp_path / "x.png")), 2)
    assert "different tasks or protocols" in text and "scr/short" in text and "scr/smoke" in text
    assert not (tmp_path / "x.png").exists()


def test_unknown_metric_lists_the_available_ones(smoke_runs, tmp_path):
    text = assert_exit(invoke(str(smoke_runs[0]), "--metric", "accuracy", "-o", str(tmp_path / "x.png")), 2)
    assert "unknown metric 'accuracy'" in text
    for name in ("all", "squared_error", "dead_fraction", "dead_fraction/layer0", "weight_magnitude"):
        assert name in text


def test_missing_directory_or_metrics_is_refused(tmp_path):
    text = assert_exit(invoke(str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.png")), 2)
    assert "no such run directory" in text
    started = tmp_path / "started"
    started.mkdir()
    write_yaml(started / "config.yaml", {"method": "bp"})
    text = assert_exit(invoke(str(started), "-o", str(tmp_path / "x.png")), 2)
    assert "no metrics.csv" in text


def test_unknown_figure_format_is_refused(smoke_runs, tmp_path):
    text = assert_exit(invoke(str(smoke_runs[0]), "-o", str(tmp_path / "x.docx")), 2)
    assert ".png" in text and not (tmp_path / "x.docx").exists()
