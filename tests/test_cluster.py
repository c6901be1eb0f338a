"""The executors on real engines (issue 12): a single-node Slurm cluster and a local Ray cluster
started by fixtures (tests/conftest.py), against joblib on this machine. The work is scr smoke
runs through ``runner.plan``/``execute``, compared by their metrics.csv, bit for bit."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.executors import run_local, run_slurm
from plastibench.runner import execute, plan

# one xdist worker runs them all, so the session starts one Slurm and one Ray
pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster"), pytest.mark.usefixtures("pickled_by_value")]


def train(item: dict, device: str, threads: int | None) -> dict:
    """An scr smoke run of ``item["method"]`` on seeds ``item["seeds"]`` under ``item["out"]``.

    Writes the steps done to ``item["progress"]`` at every report and sleeps ``item["pause"]``
    seconds there on a first attempt (a Slurm restart does not), so that a test can signal the run
    mid-way. Returns its metrics.csv, the Slurm restarts, the task of the checkpoint it resumed
    from (None: it started afresh) and its torch threads.
    """
    p = plan(item["method"], "scr", "smoke", item["seeds"], item.get("set", {}), Path(item["out"]))
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    saved = p.directory / "checkpoint.pt"
    resumed_at = torch.load(saved, weights_only=False)["task_index"] if saved.exists() else None

    def report(progress):
        if "progress" in item:
            Path(item["progress"]).write_text(str(progress.steps_done))
        if not restarts:
            time.sleep(item.get("pause", 0))

    execute(p, device=torch.device(device), on_progress=report)
    return {"metrics": (p.directory / "metrics.csv").read_text(), "restarts": restarts,
            "resumed_at": resumed_at, "threads": torch.get_num_threads()}


BAD = {"replacement_rate": "-1"}  # cbp refuses it: the item fails


def items(out: Path) -> list[dict]:
    return [{"method": "bp", "seeds": "0-1", "out": str(out)},
            {"method": "cbp", "seeds": "0", "out": str(out), "set": BAD}]


def produced(outcome) -> dict:
    """What an scr run gave, whatever its threads."""
    return {k: v for k, v in outcome.result.items() if k != "threads"}


def check_failed(outcome) -> None:
    assert not outcome.ok and outcome.result is None
    assert "replacement_rate=-1.0 is out of range" in outcome.error
    assert "Traceback" in outcome.traceback and "UsageError" in outcome.traceback


@pytest.fixture(scope="module")
def local(pickled_by_value, tmp_path_factory):
    """The outcomes of :func:`items` through joblib (2 processes), the reference for the others."""
    outcomes = run_local(train, items(tmp_path_factory.mktemp("local")), jobs=2, devices=["cpu"])
    assert [o.ok for o in outcomes] == [True, False]
    check_failed(outcomes[1])
    assert outcomes[0].result["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    return outcomes


def test_a_slurm_array_runs_every_item_keeps_a_failure_to_itself_and_logs_to_the_run_directory(
        slurm_cluster, tmp_path, local):
    work = items(tmp_path / "runs")
    run = plan("bp", "scr", "smoke", "0-1", {}, tmp_path / "runs").directory
    outcomes = run_slurm(train, work, folder=tmp_path / "submitit", partition="debug", time_min=10,
                         gpus_per_job=0, array_parallelism=4, setup=["export PLASTIBENCH_SETUP=1"],
                         log_dirs=[run, tmp_path / "failed"])
    assert [o.index for o in outcomes] == [0, 1]
    assert produced(outcomes[0]) == produced(local[0])
    check_failed(outcomes[1])
    log = Path(outcomes[1].error.rpartition("(log: ")[2].rstrip(")"))
    assert log.parent == tmp_path / "failed" and "UsageError" in log.read_text()
    assert {f.suffix for f in run.glob("slurm-*")} == {".out", ".err"} and (run / "metrics.csv").exists()
    script = next((tmp_path / "submitit").glob("*submission.sh")).read_text()
    assert "#SBATCH --requeue" in script and "export PLASTIBENCH_SETUP=1" in script


def test_usr2_requeues_the_job_which_resumes_to_the_uninterrupted_result(slurm_cluster, tmp_path, local):
    """``scancel --signal=USR2`` while the run is in its second task: the engine checkpoints,
    submitit requeues, the restarted job resumes from the checkpoint and ends as joblib's run."""
    progress = tmp_path / "progress"
    item = {**items(tmp_path / "runs")[0], "progress": str(progress), "pause": 1.0}
    done = {}
    thread = threading.Thread(target=lambda: done.update(outcomes=run_slurm(
        train, [item], folder=tmp_path / "submitit", partition=None, time_min=10, gpus_per_job=0,
        array_parallelism=1, setup=[], log_dirs=[tmp_path / "logs"])))
    thread.start()
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 250):
        assert time.monotonic() < deadline and thread.is_alive(), "the run never reached its second task"
        time.sleep(0.2)
    job = subprocess.run(["squeue", "-h", "-n", "plastibench", "-o", "%i"], capture_output=True, text=True,
                         check=True).stdout.split()
    subprocess.run(["scancel", "--signal=USR2", *job], check=True)
    thread.join(180)
    assert not thread.is_alive()
    (outcome,) = done["outcomes"]
    assert outcome.ok, outcome.traceback
    assert outcome.result["restarts"] == 1 and outcome.result["resumed_at"] in (1, 2, 3)
    assert outcome.result["metrics"] == local[0].result["metrics"]
    assert "Requeued job" in "".join(f.read_text() for f in (tmp_path / "logs").glob("slurm-*"))


SWEEP = {"name": "three", "tasks": ["scr"], "protocols": ["smoke"], "methods": ["cbp", "l2", "snp"],
         "grid": {"cbp.replacement_rate": [1.0e-4, 1.0e-3], "l2.weight_decay": [1.0e-4, 1.0e-3],
                  "snp.perturb_scale": [1.0e-4, 1.0e-3]}, "seeds": "0-4"}


def swept(spec: Path, out: Path, *options: str) -> dict[str, tuple[dict, str]]:
    """``plastibench sweep SPEC --out OUT OPTIONS``: {run directory name: (per-seed scores, metrics.csv)}."""
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), *options], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "6 finished" in result.output
    return {d.name: (yaml.safe_load((d / "summary.yaml").read_text())["per_seed"], (d / "metrics.csv").read_text())
            for d in (out / "scr" / "smoke").iterdir() if (d / "summary.yaml").exists()}


def test_a_sweep_gives_identical_summaries_through_local_slurm_and_ray(slurm_cluster, ray_cluster, tmp_path):
    """The issue's check: 3 methods x 2 values x 5 seeds of scr smoke (three batched models)."""
    spec = tmp_path / "three.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    local = swept(spec, tmp_path / "local", "--jobs", "2", "--device", "cpu")
    assert len(local) == 6
    assert swept(spec, tmp_path / "slurm", "--executor", "slurm", "--slurm-time", "10") == local
    assert swept(spec, tmp_path / "ray", "--executor", "ray", "--ray-address", ray_cluster) == local
    logs = list((tmp_path / "slurm" / "scr" / "smoke").glob("*/slurm-*.out"))
    assert len(logs) == 3  # one array task per batched model, its log in its first run directory
