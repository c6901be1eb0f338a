"""``plastibench sweep`` and ``plastibench status`` in one process: specs, expansion into the
directories ``run`` writes, failures that do not stop the others, status of a mixed sweep, tuning."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.engine import Engine
from plastibench.errors import UsageError
from plastibench.identity import run_lock
from plastibench.jobs import record_error
from plastibench.runner import execute, plan
from plastibench.sweep import batches, expand, parse_spec

WIDE = {"COLUMNS": "400"}
ISSUE_SPEC = {"tasks": ["scr"], "protocols": ["smoke"], "methods": ["bp", "cbp"],
              "grid": {"cbp.replacement_rate": [1.0e-4, 1.0e-3]}, "seeds": "0-2"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def flat(text: str) -> str:
    return " ".join(text.split())


def write_spec(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_issues_spec_is_three_configurations_in_the_directories_run_writes(tmp_path):
    configurations = expand(parse_spec(ISSUE_SPEC), tmp_path)
    assert [(c.plan.method, c.point) for c in configurations] == [
        ("bp", {}), ("cbp", {"cbp.replacement_rate": "0.0001"}), ("cbp", {"cbp.replacement_rate": "0.001"})]
    by_run = [plan("bp", "scr", "smoke", "0-2", {}, tmp_path),
              plan("cbp", "scr", "smoke", "0-2", {"replacement_rate": "1e-4"}, tmp_path),
              plan("cbp", "scr", "smoke", "0-2", {"replacement_rate": "0.001"}, tmp_path)]
    assert [c.plan.directory for c in configurations] == [p.directory for p in by_run]


def test_a_method_key_reaches_compositions_and_skips_methods_without_it(tmp_path):
    spec = parse_spec({**ISSUE_SPEC, "methods": ["bp", "cbp+l2"], "grid": {"cbp.replacement_rate": [0.001],
                                                                           "weight_decay": [0.1, 0.2]}})
    configurations = expand(spec, tmp_path)
    assert [c.plan.method for c in configurations] == ["bp", "cbp+l2", "cbp+l2"]
    assert [c.plan.hparams.get("l2.weight_decay") for c in configurations[1:]] == [0.1, 0.2]
    assert {c.plan.hparams["cbp.replacement_rate"] for c in configurations[1:]} == {0.001}


@pytest.mark.parametrize("data, message", [
    ({**ISSUE_SPEC, "grdi": {}}, "unknown key 'grdi'"),
    ({**ISSUE_SPEC, "methods": ["bp", "cbpp"]}, "cbpp"),
    ({**ISSUE_SPEC, "grid": {"cbp.replacement_rate": 0.1}}, "grid cbp.replacement_rate: give a non-empty list"),
    ({**ISSUE_SPEC, "seeds": "3-1"}, "seeds"),
    ([1, 2], "a sweep spec is a YAML mapping"),
])
def test_a_malformed_spec_is_refused_in_one_line(data, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(data)


def test_grid_values_that_coincide_are_one_configuration(tmp_path):
    spec = parse_spec({**ISSUE_SPEC, "grid": {"cbp.replacement_rate": [1.0e-4, "1e-4", 0.001]}})
    assert [c.point for c in expand(spec, tmp_path) if c.plan.method == "cbp"] == [
        {"cbp.replacement_rate": "0.0001"}, {"cbp.replacement_rate": "0.001"}]


def test_a_grid_key_no_method_has_is_refused(tmp_path):
    with pytest.raises(UsageError, match="none of bp, cbp has this hyperparameter"):
        expand(parse_spec({**ISSUE_SPEC, "grid": {"replacment_rate": [1, 2]}}), tmp_path)


def test_cli_refuses_a_bad_spec_with_exit_2(tmp_path):
    result = invoke("sweep", write_spec(tmp_path / "s.yaml", {**ISSUE_SPEC, "methods": []}), "--out", tmp_path)
    assert result.exit_code == 2 and "'methods' must be a non-empty list" in flat(result.output)
    result = invoke("sweep", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "cannot read the sweep spec" in flat(result.output)


def test_dry_run_lists_costs_and_what_run_already_finished(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", ISSUE_SPEC)
    out = tmp_path / "runs"
    assert invoke("run", "-m", "cbp", "-t", "scr", "-p", "smoke", "--seeds", "0-2", "--set",
                  "replacement_rate=0.001", "--out", out, "--device", "cpu").exit_code == 0
    result = invoke("sweep", spec, "--out", out, "--dry-run")
    text = flat(result.output)
    assert result.exit_code == 0, result.output
    assert "3 configurations" in text and "3,000" in text  # 3 seeds x 4 tasks x 250 steps
    assert "1 finished, 2 not started" in text
    assert "to compute: 6,000 seed-steps" in text
    assert not list((out / "scr" / "smoke").glob("bp-*"))  # a dry run computes nothing


def test_a_failing_configuration_does_not_stop_the_others_and_a_rerun_retries_it(tmp_path, tiny_mnist, offline):
    spec = write_spec(tmp_path / "s.yaml", {"tasks": ["pmnist", "scr"], "protocols": ["smoke"], "methods": ["bp"],
                                            "seeds": "0"})
    out, empty = tmp_path / "runs", tmp_path / "no-data"
    empty.mkdir()
    result = invoke("sweep", spec, "--out", out, "--device", "cpu", "--data-dir", empty)
    text = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "1 batched model(s) failed" in text and "1 finished, 1 failed" in text
    failed = list((out / "pmnist" / "smoke" / "_failed").glob("bp-*.txt"))
    assert len(failed) == 1 and "Traceback" in failed[0].read_text()
    status = flat(invoke("status", spec, "--out", out).output)
    assert "bp pmnist/smoke │ 600 │ failed │ DataUnavailable:" in status

    result = invoke("sweep", spec, "--out", out, "--device", "cpu", "--data-dir", tiny_mnist, "--no-verify")
    assert result.exit_code == 0, result.output
    assert "2 finished" in flat(result.output)
    assert not list((out / "pmnist" / "smoke" / "_failed").glob("*.txt"))


def _truncate_to_first_task(directory: Path) -> None:
    """What a checkpoint after task 1 leaves: metrics of one task, no summary."""
    (directory / "summary.yaml").unlink()
    (directory / "final.yaml").unlink()
    with open(directory / "metrics.csv") as f:
        rows = [r for r in csv.reader(f)]
    with open(directory / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[r for r in rows[1:] if r[1] == "0"]])


def test_status_shows_a_mixed_sweep(tmp_path):
    spec_data = {"tasks": ["scr"], "protocols": ["smoke"], "methods": ["bp", "l2", "snp"],
                 "grid": {"l2.weight_decay": [0.001, 0.01]}, "seeds": "0-1"}
    spec = write_spec(tmp_path / "s.yaml", spec_data)
    out = tmp_path / "runs"
    configurations = expand(parse_spec(spec_data), out)
    bp, l2_a, l2_b, snp = (c.plan for c in configurations)
    for p in (bp, l2_a, l2_b):
        execute(p, device=torch.device("cpu"))
    _truncate_to_first_task(l2_a.directory)
    (l2_b.directory / "summary.yaml").unlink()
    record_error(l2_b, "RuntimeError: out of memory\n\nTraceback (most recent call last):\n...\n")
    with run_lock(bp.directory):
        text = flat(invoke("status", spec, "--out", out).output)
    assert "bp" in text and "running" in text
    assert "checkpointed at task 1/4" in text
    assert "failed │ RuntimeError: out of memory │" in text
    assert "not started" in text
    assert "1 running, 1 checkpointed, 1 failed, 1 not started" in text
    text = flat(invoke("status", spec, "--out", out).output)
    assert "1 finished, 1 checkpointed, 1 failed, 1 not started" in text
    assert "1 finished" in flat(invoke("status", out / "scr").output)


def test_an_interrupted_batched_model_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """Ctrl-C in the second task of a batch of two cbp rates: the sweep exits 130 with the batch
    checkpointed; the same command resumes it, and each configuration ends as an uninterrupted run."""
    data = {**ISSUE_SPEC, "methods": ["cbp"], "seeds": "0-1", "grid": {"cbp.replacement_rate": [1.0e-3, 1.0e-2]}}
    spec = write_spec(tmp_path / "s.yaml", data)
    whole = {}
    assert invoke("sweep", spec, "--out", tmp_path / "whole", "--device", "cpu").exit_code == 0
    for c in expand(parse_spec(data), tmp_path / "whole"):
        whole[c.plan.directory.name] = (c.plan.directory / "metrics.csv").read_text()
    steps, original = {"n": 0}, Engine.train_step

    def interrupt_at_400(self):
        steps["n"] += 1
        if steps["n"] == 400 and not steps.get("resuming"):
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Engine, "train_step", interrupt_at_400)
    result = invoke("sweep", spec, "--out", tmp_path / "resumed", "--device", "cpu", "--checkpoint-every", "0")
    assert result.exit_code == 130 and "Re-run the same command to resume" in flat(result.output)
    (batch,) = (tmp_path / "resumed" / "scr" / "smoke" / "_batched").iterdir()
    assert (batch / "checkpoint.pt").exists()
    assert "checkpointed at task 1/4" in flat(invoke("status", spec, "--out", tmp_path / "resumed").output)
    steps.update(n=0, resuming=True)
    assert invoke("sweep", spec, "--out", tmp_path / "resumed", "--device", "cpu").exit_code == 0
    assert steps["n"] == 1000 - 399, "the batch started again instead of resuming"
    for name, metrics in whole.items():
        assert (tmp_path / "resumed" / "scr" / "smoke" / name / "metrics.csv").read_text() == metrics


def test_select_chooses_on_tune_seeds_and_reports_on_fresh_ones(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", {
        "name": "tune", "tasks": ["scr"], "protocols": ["smoke"], "methods": ["l2"],
        "grid": {"weight_decay": [0.0, 0.5]}, "tune_seeds": "0-1", "report_seeds": "7-8",
        "select": {"rule": "best-mean", "last_fraction": 0.5}})
    out = tmp_path / "runs"
    result = invoke("sweep", spec, "--out", out, "--device", "cpu", "--select")
    assert result.exit_code == 0, result.output
    chosen = yaml.safe_load((out / "_sweeps" / "tune" / "selected.yaml").read_text())["choices"]
    (record,) = chosen
    means = {c["point"]["weight_decay"]: c["mean"] for c in record["candidates"]}
    best = min(means, key=means.get)
    assert record["chosen"] == {"weight_decay": best} and record["tuning_budget"] == 2
    assert "last 0.5 of tasks" in record["rule"] and "tune seeds 0-1" in record["rule"]
    report = plan("l2", "scr", "smoke", "7-8", {"weight_decay": best}, out)
    assert yaml.safe_load((report.directory / "summary.yaml").read_text())["n_seeds"] == 2
    assert yaml.safe_load((report.directory / "selection.yaml").read_text())["tuning_budget"] == 2


def test_select_needs_tune_and_report_seeds(tmp_path):
    result = invoke("sweep", write_spec(tmp_path / "s.yaml", ISSUE_SPEC), "--select", "--out", tmp_path)
    assert result.exit_code == 2 and "--select needs tune_seeds and report_seeds" in flat(result.output)


def test_no_batch_grid_gives_one_model_per_configuration(tmp_path):
    configurations = expand(parse_spec(ISSUE_SPEC), tmp_path)
    assert len(batches(configurations, together=False)) == 3


def test_a_batched_grid_equals_separate_runs_and_writes_each_configuration(tmp_path):
    """cbp's two rates as members of one model: each configuration's directory holds what its own
    run gives (config, metrics, summary), and the batch's checkpoint is gone at the end."""
    spec = write_spec(tmp_path / "s.yaml", {**ISSUE_SPEC, "methods": ["cbp"], "seeds": "0-1",
                                            "grid": {"cbp.replacement_rate": [1.0e-3, 1.0e-2]}})
    configurations = expand(parse_spec(yaml.safe_load(spec.read_text())), tmp_path / "batched")
    assert len(batches(configurations)) == 1
    result = invoke("sweep", spec, "--out", tmp_path / "batched", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert invoke("sweep", spec, "--out", tmp_path / "alone", "--device", "cpu", "--no-batch-grid").exit_code == 0
    for c in configurations:
        alone = tmp_path / "alone" / c.plan.directory.relative_to(tmp_path / "batched")
        assert (c.plan.directory / "metrics.csv").read_text() == (alone / "metrics.csv").read_text()
        batched = yaml.safe_load((c.plan.directory / "summary.yaml").read_text())
        assert batched["per_seed"] == yaml.safe_load((alone / "summary.yaml").read_text())["per_seed"]
        assert yaml.safe_load((c.plan.directory / "environment.yaml").read_text())["batched"]["members"] == 4
    rates = [yaml.safe_load((c.plan.directory / "config.yaml").read_text())["hparams"]["replacement_rate"]
             for c in configurations]
    assert rates == [1e-3, 1e-2]
    scores = [yaml.safe_load((c.plan.directory / "summary.yaml").read_text())["mean"] for c in configurations]
    assert scores[0] != scores[1]  # the members really ran at different rates
    (batch,) = (tmp_path / "batched" / "scr" / "smoke" / "_batched").iterdir()
    assert not (batch / "checkpoint.pt").exists() and (batch / "members.yaml").exists()
