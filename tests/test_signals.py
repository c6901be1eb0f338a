"""Slurm preemption and batch logs: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 checkpoint and exit with
128 + the signal's number; the re-run resumes to the uninterrupted result; progress goes to a log as plain
lines when stderr is not a terminal; a resumed run's elapsed time continues."""

import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.engine import Preempted
from plastibench.registry import METHODS
from plastibench.results import read_yaml
from plastibench.runner import execute, plan

CPU = torch.device("cpu")


def _at_step(monkeypatch, step: int, signum: int) -> None:
    """Deliver ``signum`` to this process right after global step ``step``'s optimizer update."""
    cls = METHODS.get("bp")
    original, fired = cls.after_step, []

    def after_step(self, info):
        original(self, info)
        if int(info.step) == step and not fired:
            fired.append(True)
            signal.raise_signal(signum)

    monkeypatch.setattr(cls, "after_step", after_step)


@pytest.fixture
def main_thread_signals():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("signals are not Python's defaults here")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """metrics.csv of the uninterrupted bp scr/smoke run of seeds 0-1 (computed once, read-only)."""
    ref = plan("bp", "scr", "smoke", "0-1", {}, tmp_path_factory.mktemp("ref"))
    execute(ref, device=CPU)
    return ref.directory / "metrics.csv"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_a_preemption_signal_checkpoints_and_the_rerun_resumes_to_the_same_result(
        tmp_path, monkeypatch, main_thread_signals, uninterrupted, signum):
    p = plan("bp", "scr", "smoke", "0-1", {}, tmp_path / "cut")
    _at_step(monkeypatch, 600, signum)
    with pytest.raises(Preempted) as caught:
        execute(p, device=CPU, checkpoint_every=1e9)
    assert caught.value.exit_code == 128 + signum
    assert (p.directory / "checkpoint.pt").exists() and not (p.directory / "summary.yaml").exists()
    monkeypatch.undo()
    resumed = plan("bp", "scr", "smoke", "0-1", {}, tmp_path / "cut")
    execute(resumed, device=CPU)
    assert uninterrupted.read_text() == (p.directory / "metrics.csv").read_text()


def test_usr2_defers_submitits_handler_until_the_checkpoint(tmp_path, monkeypatch, main_thread_signals):
    """submitit installs its USR2 handler (checkpoint, requeue, exit) before the job's function runs:
    during a run the engine's handler takes USR2 in its place, so the run checkpoints at a step's end
    and raises Preempted, and submitit's handler is back in place when it does."""
    outer = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: outer.append(signum))
    try:
        p = plan("bp", "scr", "smoke", "0", {}, tmp_path)
        _at_step(monkeypatch, 300, signal.SIGUSR2)
        with pytest.raises(Preempted) as caught:
            execute(p, device=CPU, checkpoint_every=1e9)
        assert caught.value.name == "SIGUSR2" and outer == []
        assert torch.load(p.directory / "checkpoint.pt", weights_only=False)["step_in_task"] == 51
        signal.raise_signal(signal.SIGUSR2)
        assert outer == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_through_the_cli_is_one_line_and_status_143(tmp_path, monkeypatch, main_thread_signals):
    _at_step(monkeypatch, 300, signal.SIGTERM)
    result = CliRunner().invoke(app, ["run", "-m", "bp", "-t", "scr", "-p", "smoke", "--seeds", "0-1", "--out",
                                      str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 143, result.output
    lines = [line for line in result.output.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1 and "checkpoint saved" in lines[0] and "Traceback" not in result.output


def test_plain_log_lines_when_stderr_is_not_a_terminal(tmp_path):
    result = CliRunner().invoke(app, ["run", "-m", "bp", "-t", "scr", "-p", "smoke", "--seeds", "0", "--out",
                                      str(tmp_path), "--log-every", "1"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    logged = [line for line in result.output.splitlines() if "seed-steps/s, elapsed" in line]
    assert logged and "task 0/4, step 0/1,000" in logged[0] and "UTC]" in logged[0]
    assert "tasks 4/4" not in result.output  # no progress bar in a log (only the results table)


def test_a_resumed_run_continues_its_elapsed_time(tmp_path, monkeypatch, main_thread_signals):
    p = plan("bp", "scr", "smoke", "0", {}, tmp_path)
    _at_step(monkeypatch, 500, signal.SIGTERM)
    with pytest.raises(Preempted):
        execute(p, device=CPU, checkpoint_every=1e9)
    monkeypatch.undo()
    first = torch.load(Path(p.directory) / "checkpoint.pt", weights_only=False)["wall_time"]
    seen = []
    execute(plan("bp", "scr", "smoke", "0", {}, tmp_path), device=CPU, on_progress=seen.append)
    assert first > 0 and seen[0].elapsed_s >= first
    assert read_yaml(p.directory / "final.yaml")["wall_time_s"] >= first


def test_reports_come_on_time_whatever_the_segment_length(tmp_path):
    """With report_every tiny, the steppers hand control back between steps: reports are not held
    until a CHECK_EVERY boundary (1000 steps) or a task end (250 steps on scr smoke)."""
    seen = []
    execute(plan("bp", "scr", "smoke", "0", {}, tmp_path), device=CPU, on_progress=seen.append,
            report_every=1e-4)
    steps = {pr.steps_done for pr in seen}
    assert len(steps) > 20 and any(s % 250 for s in steps)
