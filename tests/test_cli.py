"""The command line, through typer's CliRunner: usage errors, runs, data errors, list and show."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.errors import UsageError
from plastibench.registry import METHODS, TASKS
from plastibench.runner import plan

WIDE = {"COLUMNS": "250"}  # rich tables are not truncated


def invoke(*args: str, env=None):
    result = CliRunner().invoke(app, list(args), env={**WIDE, **(env or {})})
    return result


def flat(text: str) -> str:
    """Output with all whitespace runs collapsed (rich wraps long lines)."""
    return " ".join(text.split())


def assert_clean_exit(result, code: int) -> str:
    """Exit status ``code`` through typer/SystemExit, no traceback; returns the flattened output."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return flat(result.output)


def smoke_run(out: Path, *extra: str, method: str = "bp,cbp", task: str = "scr"):
    return invoke("run", "--method", method, "--task", task, "--protocol", "smoke", "--device", "cpu",
                  "--out", str(out), *extra)


# --------------------------------------------------------------------------------------------
# usage errors: exit 2, a message, no traceback, nothing written
# --------------------------------------------------------------------------------------------

def test_misspelled_method_suggests_the_close_name(tmp_path):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", method="cpb"), 2)
    assert "unknown method 'cpb'" in text and "Did you mean 'cbp'" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("task, close", [("scrr", "scr"), ("pmnst", "pmnist")])
def test_unknown_task_suggests_close_names(tmp_path, task, close):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", task=task), 2)
    assert f"unknown task '{task}'" in text and f"'{close}'" in text


def test_unknown_protocol_names_the_available_ones(tmp_path):
    result = invoke("run", "--method", "bp", "--task", "scr", "--protocol", "tiny", "--out", str(tmp_path))
    text = assert_clean_exit(result, 2)
    assert "'tiny'" in text
    for name in TASKS.get("scr").protocols:
        assert name in text


@pytest.mark.parametrize("seeds", ["3-1", "x", "-1", "1,,2", "0-x"])
def test_bad_seeds_exit_2(tmp_path, seeds):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", f"--seeds={seeds}"), 2)
    assert "--seeds" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setting, message", [
    ("nosuchkey=1", "nosuchkey"),
    ("cbp.replacement_rate=abc", "replacement_rate"),
    ("cbp.nosuchkey=1", "nosuchkey"),
    ("snp.weight_decay=0.1", "snp"),           # a method not being run
    ("replacement_rate", "KEY=VALUE"),        # no '='
    ("cbp.utility=gradient", "utility"),      # not one of the choices
    ("cbp.next_bias_correction=maybe", "next_bias_correction"),
])
def test_bad_overrides_exit_2(tmp_path, setting, message):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", "--set", setting), 2)
    assert message in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_exits_2(tmp_path):
    result = invoke("run", "--method", "bp", "--task", "scr", "--protocol", "smoke", "--device", "cuda",
                    "--out", str(tmp_path / "runs"))
    text = assert_clean_exit(result, 2)
    assert "cuda" in text.lower() and "--device cpu" in text
    assert not (tmp_path / "runs").exists()


def test_unknown_device_exits_2(tmp_path):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", "--device", "tpu"), 2)
    assert "tpu" in text


# --------------------------------------------------------------------------------------------
# a real run
# --------------------------------------------------------------------------------------------

SUMMARY_KEYS = {"method", "task", "protocol", "protocol_hash", "metric", "higher_is_better", "per_seed",
                "mean", "ci95"}


def run_dirs(out: Path, task: str, protocol: str = "smoke") -> dict[str, Path]:
    dirs = sorted((out / task / protocol).iterdir())
    return {d.name.rsplit("-", 1)[0]: d for d in dirs}


def test_run_two_methods_writes_run_directories_and_table(tmp_path):
    out = tmp_path / "runs"
    result = smoke_run(out)
    text = assert_clean_exit(result, 0)
    proto = TASKS.get("scr").protocol("smoke")
    dirs = run_dirs(out, "scr")
    assert sorted(dirs) == ["bp", "cbp"]
    for method, d in dirs.items():
        for name in ("config.yaml", "environment.yaml", "metrics.csv", "summary.yaml"):
            assert (d / name).is_file(), name
        s = yaml.safe_load((d / "summary.yaml").read_text())
        assert SUMMARY_KEYS <= set(s)
        assert s["method"] == method and s["task"] == "scr" and s["protocol"] == "smoke"
        assert s["protocol_hash"] == proto.hash and s["metric"] == "squared_error"
        assert s["higher_is_better"] is False
        assert sorted(s["per_seed"]) == list(range(proto.default_seeds))
        x = np.array(list(s["per_seed"].values()))
        assert s["mean"] == pytest.approx(x.mean(), rel=1e-12)
        low, high = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert s["ci95"] == pytest.approx([low, high], rel=1e-9)
        # the per-seed score is the mean over the final window of metrics.csv
        with open(d / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "squared_error"]
        assert len(rows) == proto.n_tasks * proto.default_seeds
        last = [float(r["value"]) for r in rows if int(r["task_index"]) >= proto.n_tasks - proto.summary_tasks
                and r["seed"] == "0"]
        assert s["per_seed"][0] == pytest.approx(np.mean(last), rel=1e-12)
        config = yaml.safe_load((d / "config.yaml").read_text())
        assert config["method"] == method and config["seeds"] == list(range(proto.default_seeds))
        assert config["protocol_hash"] == proto.hash
        env = yaml.safe_load((d / "environment.yaml").read_text())
        assert env["device"] == "cpu" and env["torch"] == str(torch.__version__)
        # the table shows the method, its mean and its interval
        row = [r for r in table_rows(result.output) if r[0] == method]
        assert len(row) == 1 and row[0][1] == f"{s['mean']:.4f}"
        assert row[0][2] == f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]" and row[0][3] == "3"
    assert "scr/smoke" in text and proto.hash in text and "lower is better" in text


def table_rows(output: str) -> list[list[str]]:
    """The body rows of rich tables in ``output``, as lists of stripped cells."""
    return [[c.strip() for c in line.strip().strip("│").split("│")]
            for line in output.splitlines() if line.strip().startswith("│")]


def test_override_applies_only_to_methods_that_have_the_key(tmp_path):
    out = tmp_path / "runs"
    assert_clean_exit(smoke_run(out, "--seeds", "0", "--set", "replacement_rate=0.001"), 0)
    dirs = run_dirs(out, "scr")
    cbp = yaml.safe_load((dirs["cbp"] / "config.yaml").read_text())
    bp = yaml.safe_load((dirs["bp"] / "config.yaml").read_text())
    assert cbp["hparams"]["replacement_rate"] == 0.001
    assert cbp["hparams"]["maturity_threshold"] == 10  # the other scr defaults are kept
    assert bp["hparams"] == {}
    assert yaml.safe_load((dirs["cbp"] / "summary.yaml").read_text())["hparams"]["replacement_rate"] == 0.001


def test_override_in_scientific_notation_is_accepted_by_plan(tmp_path):
    p = plan("cbp", "scr", "smoke", "0", {"replacement_rate": "0.001"}, tmp_path)
    assert p.hparams["replacement_rate"] == 0.001


def test_scientific_notation_override(tmp_path):
    p = plan("cbp", "scr", "smoke", "0", {"replacement_rate": "1e-4"}, tmp_path)
    assert p.hparams["replacement_rate"] == pytest.approx(1e-4)


def test_non_integer_value_for_integer_hyperparameter_is_refused(tmp_path):
    with pytest.raises(UsageError):
        plan("cbp", "scr", "smoke", "0", {"maturity_threshold": "10.5"}, tmp_path)


# --------------------------------------------------------------------------------------------
# pmnist data: missing, unverified, verified-but-wrong
# --------------------------------------------------------------------------------------------

def pmnist_run(out: Path, *extra: str, env=None):
    return invoke("run", "--method", "bp", "--task", "pmnist", "--protocol", "smoke", "--device", "cpu",
                  "--seeds", "0", "--out", str(out), *extra, env=env)


def test_pmnist_missing_data_explains_what_to_do(tmp_path, offline):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = assert_clean_exit(pmnist_run(tmp_path / "runs", "--data-dir", str(empty)), 1)
    assert "train-images-idx3-ubyte" in text and "train-labels-idx1-ubyte" in text
    assert "PLASTIBENCH_DATA" in text and "--data-dir" in text
    assert not list((tmp_path / "runs").rglob("summary.yaml"))


def test_pmnist_missing_data_via_environment_variable(tmp_path, offline):
    empty = tmp_path / "envdata"
    empty.mkdir()
    text = assert_clean_exit(pmnist_run(tmp_path / "runs", env={"PLASTIBENCH_DATA": str(empty)}), 1)
    assert "train-images-idx3-ubyte" in text and "envdata" in text.replace(" ", "")


def test_pmnist_runs_on_tiny_mnist_with_no_verify(tmp_path, tiny_mnist, offline):
    out = tmp_path / "runs"
    text = assert_clean_exit(pmnist_run(out, "--data-dir", str(tiny_mnist), "--no-verify"), 0)
    assert "online_accuracy" in text and "higher is better" in text
    d = run_dirs(out, "pmnist")["bp"]
    s = yaml.safe_load((d / "summary.yaml").read_text())
    assert s["metric"] == "online_accuracy" and s["higher_is_better"] is True
    assert s["ci95"] is None and 0.0 <= s["per_seed"][0] <= 1.0  # one seed: no interval
    assert "n/a" in text
    env = yaml.safe_load((d / "environment.yaml").read_text())
    assert env["data"]["mnist"]["verified"] is False and env["data"]["mnist"]["images"] == 300


def test_pmnist_checksum_mismatch_points_to_no_verify(tmp_path, tiny_mnist, offline):
    text = assert_clean_exit(pmnist_run(tmp_path / "runs", "--data-dir", str(tiny_mnist)), 1)
    assert "checksum mismatch" in text and "--no-verify" in text


# --------------------------------------------------------------------------------------------
# list and show
# --------------------------------------------------------------------------------------------

def test_list_methods():
    rows = json.loads(assert_clean_exit(invoke("list", "methods", "--json"), 0))
    names = {r["name"] for r in rows}
    assert {"bp", "cbp", "l2", "snp"} <= names
    assert all(r["summary"] and r["paper"] for r in rows)
    text = assert_clean_exit(invoke("list", "methods"), 0)
    for name in ("bp", "cbp", "l2", "snp"):
        assert f" {name} " in f" {text} "


def test_list_tasks():
    rows = json.loads(assert_clean_exit(invoke("list", "tasks", "--json"), 0))
    by_name = {r["name"]: r for r in rows}
    assert {"scr", "pmnist"} <= set(by_name)
    for r in by_name.values():
        assert {"paper", "short", "smoke"} <= set(r["protocols"])
    text = assert_clean_exit(invoke("list", "tasks"), 0)
    assert "scr" in text and "pmnist" in text


def test_list_protocols():
    rows = json.loads(assert_clean_exit(invoke("list", "protocols", "--json"), 0))
    found = {(r["task"], r["name"]): r for r in rows}
    for task in ("scr", "pmnist"):
        for name in ("paper", "short", "smoke"):
            row = found[(task, name)]
            proto = TASKS.get(task).protocol(name)
            assert row["hash"] == proto.hash and row["tasks"] == proto.n_tasks
            assert row["steps_per_task"] == proto.steps_per_task and row["metric"] == proto.metric
    text = assert_clean_exit(invoke("list", "protocols"), 0)
    assert TASKS.get("scr").protocol("smoke").hash in text
    assert TASKS.get("pmnist").protocol("paper").hash in text


def test_list_unknown_kind_exits_2():
    result = invoke("list", "recipes")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_show_method_cbp():
    result = invoke("show", "method", "cbp")
    text = assert_clean_exit(result, 0)
    assert "Update rule" in text and "Nature 632:768-774" in text
    rows = defaults_table(result.output)
    assert rows["pmnist"]["replacement_rate"] == "1e-06" and rows["pmnist"]["count_rule"] == "accumulate"
    assert rows["pmnist"]["maturity_threshold"] == "100"
    assert rows["scr"]["replacement_rate"] == "0.0001" and rows["scr"]["count_rule"] == "bernoulli"
    assert rows["scr"]["maturity_threshold"] == "10" and rows["scr"]["utility"] == "adaptable_contribution"
    assert rows["sant"]["utility"] == "contribution" and rows["sant"]["maturity_threshold"] == "10000"
    assert rows["(any)"]["replacement_rate"] == str(METHODS.get("cbp").hparams_for("(any)")["replacement_rate"])


def defaults_table(output: str) -> dict[str, dict[str, str]]:
    """``show method``'s two tables as {task: {hyperparameter: value}}, "(any)" the defaults."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "hyperparameters")
    split = next(i for i, line in enumerate(lines) if line.strip().startswith("defaults per task"))
    rows = {"(any)": {r[0]: r[2] for r in table_rows("\n".join(lines[start:split]))}}
    task = None
    for name, key, value in table_rows("\n".join(lines[split:])):
        task = name or task
        rows[task] = {**rows.get(task, rows["(any)"]), key: value}
    return rows


def test_show_method_unknown_exits_2():
    text = assert_clean_exit(invoke("show", "method", "nosuch"), 2)
    assert "nosuch" in text and "cbp" in text


def test_show_task_scr():
    text = assert_clean_exit(invoke("show", "task", "scr"), 0)
    for p in TASKS.get("scr").protocols.values():
        assert p.name in text and p.hash in text
    assert "flip-one" in text and "LTU" in text


def test_show_task_unknown_exits_2():
    text = assert_clean_exit(invoke("show", "task", "scrr"), 2)
    assert "'scr'" in text


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "plastibench" in result.output
