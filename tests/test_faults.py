"""Every input and file fault ends in one line and exit status 1 (I/O, data) or 2 (usage), no traceback."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from plastibench import memory
from plastibench.cli import app

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def one_line(result, code: int) -> str:
    """Exit ``code``, no traceback, exactly one non-empty line of output (rich formatting stripped)."""
    text = ANSI.sub("", result.output)
    assert result.exit_code == code, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def smoke(out: Path, *extra: str, method: str = "bp", task: str = "scr"):
    return invoke("run", "-m", method, "-t", task, "-p", "smoke", "--device", "cpu", "--seeds", "0-1",
                  "--out", out, *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished scr/smoke bp run directory (2 seeds), made once; tests copy it."""
    out = tmp_path_factory.mktemp("faults") / "runs"
    assert smoke(out).exit_code == 0
    return next(out.glob("scr/smoke/bp-*"))


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dest = tmp_path / "runs" / "scr" / "smoke" / finished.name
    shutil.copytree(finished, dest)
    return dest


# ----- --out and --data-dir -----

def test_out_naming_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_line(smoke(tmp_path / "f"), 2)
    assert "--out" in line and "is a file" in line


def test_data_dir_naming_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_line(smoke(tmp_path / "runs", "--data-dir", tmp_path / "f", task="pmnist"), 2)
    assert "--data-dir" in line and "not a directory" in line


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line(smoke(ro / "runs"), 1)
    finally:
        ro.chmod(0o755)
    assert "--out" in line and "cannot write" in line


def test_read_only_out_simulated(tmp_path, monkeypatch):
    """As root chmod does not stop writes: a read-only file system is simulated where --out is probed."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    line = one_line(smoke(tmp_path / "runs"), 1)
    assert "--out" in line and "Read-only file system" in line and "writable" in line


def test_write_failure_during_the_run(tmp_path, monkeypatch):
    from plastibench import runner

    def refuse(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(runner, "write_yaml", refuse)
    line = one_line(smoke(tmp_path / "runs"), 1)
    assert "No space left on device" in line and "config.yaml" in line


# ----- checkpoint.pt -----

@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-checkpoint"])
def test_unreadable_checkpoint_offers_restart(run_copy, damage):
    out = run_copy.parents[2]
    (run_copy / "summary.yaml").unlink()  # unfinished: the run resumes from its checkpoint
    ckpt = run_copy / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 100)
    else:
        import torch
        torch.save([1, 2, 3], ckpt)
    line = one_line(smoke(out), 1)
    assert "checkpoint.pt" in line and "unreadable" in line and "--restart" in line


def test_restart_discards_a_garbage_checkpoint_and_completes(run_copy):
    out = run_copy.parents[2]
    (run_copy / "summary.yaml").unlink()
    (run_copy / "checkpoint.pt").write_bytes(b"garbage")
    result = smoke(out, "--restart")
    assert result.exit_code == 0, result.output
    summary = yaml.safe_load((run_copy / "summary.yaml").read_text())
    assert summary["n_seeds"] == 2


def test_damaged_summary_of_a_finished_run_is_recomputed_from_the_metrics(run_copy):
    (run_copy / "summary.yaml").write_text("mean: [unclosed\n")
    result = smoke(run_copy.parents[2])
    assert result.exit_code == 0 and "Traceback" not in result.output and "cached" in result.output
    summary = yaml.safe_load((run_copy / "summary.yaml").read_text())
    assert summary["recomputed_from"] == "metrics.csv" and len(summary["per_seed"]) == 2


# ----- leaderboard submit, plot, compare -----

@pytest.mark.parametrize("text", ["{{{: not yaml", "- a list\n- not a mapping\n", ""])
def test_corrupted_environment_at_submit(run_copy, tmp_path, text):
    (run_copy / "environment.yaml").write_text(text)
    line = one_line(invoke("leaderboard", "submit", run_copy, "--root", tmp_path / "lb"), 1)
    assert "environment.yaml" in line
    assert not (tmp_path / "lb").exists()


def _edit_metrics(run_dir: Path, edit: str) -> None:
    path = run_dir / "metrics.csv"
    lines = path.read_text().splitlines()
    if edit == "non-numeric":
        fields = lines[3].split(",")
        lines[3] = ",".join(fields[:3] + ["abc"])
    elif edit == "missing-column":
        lines[3] = ",".join(lines[3].split(",")[:3])
    else:  # header without the value column
        lines[0] = "seed,task_index,metric,valu"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit", ["non-numeric", "missing-column", "renamed-header"])
def test_edited_metrics_row_at_plot(run_copy, tmp_path, edit):
    _edit_metrics(run_copy, edit)
    line = one_line(invoke("plot", run_copy, "-o", tmp_path / "c.png"), 1)
    assert "metrics.csv" in line and "line" in line and "--restart" in line
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("edit, words", [
    ("per_seed: {0: abc, 1: 0.5}", "not a finite number"),
    ("per_seed: [1, 2]", "per_seed should be dict"),
    ("task: null", "field task should be str"),
])
def test_edited_summary_at_compare_is_recomputed_from_the_metrics(run_copy, edit, words):
    original = yaml.safe_load((run_copy / "summary.yaml").read_text())
    data = dict(original)
    data.update(yaml.safe_load(edit))
    (run_copy / "summary.yaml").write_text(yaml.safe_dump(data))
    result = invoke("compare", run_copy)
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert yaml.safe_load((run_copy / "summary.yaml").read_text())["per_seed"] == original["per_seed"]


def test_edited_metrics_at_compare_and_plot_of_a_damaged_config(run_copy, tmp_path):
    _edit_metrics(run_copy, "non-numeric")
    line = one_line(invoke("compare", run_copy), 1)  # the summary is recomputed from metrics.csv
    assert "metrics.csv" in line
    (run_copy / "config.yaml").write_text("seeds: 3\n")
    line = one_line(invoke("plot", run_copy, "-o", tmp_path / "c.png"), 1)
    assert "config.yaml" in line and "missing field" in line


# ----- option values -----

def test_method_of_only_commas(tmp_path):
    line = one_line(smoke(tmp_path / "runs", method=","), 2)
    assert "--method" in line and "names no method" in line
    assert not (tmp_path / "runs").exists()


def test_bench_zero_seeds():
    line = one_line(invoke("bench", "--seeds", "0"), 2)
    assert "--seeds" in line and "at least 1" in line


def test_absurd_seed_count_is_refused_at_once(tmp_path):
    line = one_line(invoke("run", "-m", "bp", "-t", "scr", "-p", "smoke", "--seeds", "0-999999999999",
                           "--out", tmp_path / "runs"), 2)
    assert "--seeds" in line and "seeds" in line
    assert not (tmp_path / "runs").exists()


# ----- memory -----

def test_seeds_that_do_not_fit_are_refused_before_training(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 10**9)
    built = []
    from plastibench import runner
    monkeypatch.setattr(runner, "Engine", lambda *a, **k: built.append(1))
    line = one_line(invoke("run", "-m", "bp", "-t", "pmnist", "-p", "smoke", "--device", "cpu",
                           "--seeds", "0-100000", "--data-dir", tiny_mnist, "--no-verify",
                           "--out", tmp_path / "runs"), 2)
    assert "100001 seeds" in line and "GB" in line and "8.0 GB is free" in line and "fewer seeds" in line
    assert "parameters" in line and "optimizer state" in line and "task data" in line
    assert not built and not list((tmp_path / "runs").rglob("*.yaml"))


def test_memory_refusal_without_patching(tiny_mnist, tmp_path):
    """pmnist/paper: 100001 seeds of 784-2000-2000-2000-10 are terabytes on any machine."""
    line = one_line(invoke("run", "-m", "bp", "-t", "pmnist", "-p", "paper", "--device", "cpu",
                           "--seeds", "0-100000", "--data-dir", tiny_mnist, "--no-verify",
                           "--out", tmp_path / "runs"), 2)
    assert "100001 seeds" in line and "fewer seeds" in line


def test_estimate_counts_optimizer_state():
    from plastibench.protocol import OptimizerSpec
    assert memory.optimizer_copies(OptimizerSpec()) == 1
    assert memory.optimizer_copies(OptimizerSpec(momentum=0.9)) == 2
    assert memory.optimizer_copies(OptimizerSpec(name="adam")) == 3


def test_cimagenet_estimate_scales_with_seeds(tiny_imagenet32):
    from plastibench.registry import METHODS, TASKS
    task = TASKS.get("cimagenet")
    one = memory.estimate(METHODS.get("bp"), {}, task, task.protocol("smoke"), 1, data_dir=tiny_imagenet32)
    many = memory.estimate(METHODS.get("bp"), {}, task, task.protocol("smoke"), 1000, data_dir=tiny_imagenet32)
    assert many.parameters == 1000 * one.parameters > 0
    assert many.data >= one.data > 0


# ----- Ctrl-C at start-up -----

def test_ctrl_c_while_loading_data_exits_130(tmp_path, monkeypatch):
    from plastibench import runner

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "check_fits", interrupt)
    line = one_line(smoke(tmp_path / "runs"), 130)
    assert "interrupted" in line and "nothing was saved" in line


def test_ctrl_c_while_importing_exits_130(monkeypatch, capsys):
    import importlib.abc

    from plastibench import entry

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "plastibench.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "plastibench.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
