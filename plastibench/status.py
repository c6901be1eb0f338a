"""Where each configuration of a sweep (or each run under a directory) stands.

States, in the order they are decided: ``running`` (another process holds the run's lock),
``finished`` (summary.yaml), ``failed`` (error.txt: its summary line),
``checkpointed`` (metrics of k tasks, or a checkpoint inside the first task), ``not started``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .identity import try_lock
from .jobs import ERROR_FILE, error_paths
from .results import ResultError, load_summary, read_metrics, read_yaml
from .registry import METHODS, UnknownName
from .runner import Plan

RUNNING, FINISHED, FAILED, CHECKPOINTED, NOT_STARTED = "running", "finished", "failed", "checkpointed", "not started"


@dataclass
class RunState:
    label: str
    directory: Path | None
    state: str
    tasks_done: int
    n_tasks: int
    detail: str = ""  # the mean of a finished run, the last error line of a failed one
    seed_steps: int = 0

    @property
    def progress(self) -> str:
        if self.state == CHECKPOINTED:
            return f"checkpointed at task {self.tasks_done}/{self.n_tasks}"
        if self.state == RUNNING and self.tasks_done:
            return f"running, {self.tasks_done}/{self.n_tasks} tasks saved"
        return self.state


def _locked_by_other(directory: Path) -> bool:
    if not (directory / ".lock").exists():
        return False
    fd = try_lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


def _tasks_recorded(directory: Path) -> int:
    try:
        metrics = read_metrics(directory / "metrics.csv")
    except (OSError, ValueError, ResultError):
        return 0
    return min((len(v) for per_seed in metrics.values() for v in per_seed.values()), default=0)


def error_line(path: Path) -> str:
    """The summary line of an error.txt (its first line)."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0] if lines else "failed (no message)"


def locate(p: Plan) -> Path | None:
    """The run directory of a plan whose data record is not known yet (a task with data): the one
    whose config.yaml equals the plan's in everything but the data."""
    if p.directory is not None:
        return p.directory
    root = Path(p.out) / p.config["task"] / p.config["protocol"]
    want = {k: v for k, v in p.config.items() if k != "data"}
    for config_file in sorted(root.glob(f"{p.method}-*/config.yaml")):
        try:
            config = read_yaml(config_file)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict) and {k: v for k, v in config.items() if k != "data"} == want:
            return config_file.parent
    return None


def state_of_directory(directory: Path, label: str, n_tasks: int, errors: Iterable[Path] = ()) -> RunState:
    if _locked_by_other(directory):
        return RunState(label, directory, RUNNING, _tasks_recorded(directory), n_tasks)
    if (directory / "summary.yaml").exists():
        try:
            summary = load_summary(directory, rewrite=False)
            return RunState(label, directory, FINISHED, n_tasks, n_tasks, f"{summary['mean']:.4g}")
        except ResultError as exc:
            return RunState(label, directory, FAILED, _tasks_recorded(directory), n_tasks, str(exc))
    for path in [directory / ERROR_FILE, *errors]:
        if path.exists():
            return RunState(label, directory, FAILED, _tasks_recorded(directory), n_tasks, error_line(path))
    done = _tasks_recorded(directory)
    if done or (directory / "checkpoint.pt").exists():
        return RunState(label, directory, CHECKPOINTED, done, n_tasks)
    return RunState(label, directory, NOT_STARTED, 0, n_tasks)


def state_of(p: Plan, label: str) -> RunState:
    """The state of one planned configuration (it may never have run)."""
    spec = p.config["protocol_spec"]
    n_tasks = spec["n_tasks"]
    cost = len(p.config["seeds"]) * n_tasks * spec["steps_per_task"]
    directory = locate(p)
    if directory is None or not directory.exists():
        fallback = error_paths(p)[-1]
        if fallback.exists():
            return RunState(label, directory, FAILED, 0, n_tasks, error_line(fallback), cost)
        return RunState(label, directory, NOT_STARTED, 0, n_tasks, "", cost)
    state = state_of_directory(directory, label, n_tasks, error_paths(p)[-1:])
    state.seed_steps = cost
    return state


def run_label(config: Mapping[str, Any]) -> str:
    """``cbp scr/smoke replacement_rate=0.001``: the method, task/protocol and the hyperparameters
    that differ from the method's defaults for the task."""
    try:
        defaults = METHODS.get(config["method"]).hparams_for(config["task"])
    except (UnknownName, ValueError):
        defaults = {}
    changed = [f"{k}={v}" for k, v in config.get("hparams", {}).items() if defaults.get(k, v) != v or k not in defaults]
    changed += [f"task.{k}={v}" for k, v in config.get("task_options", {}).items()]
    return " ".join([config["method"], f"{config['task']}/{config['protocol']}", *changed])


def states_under(root: Path) -> list[RunState]:
    """Every run directory below ``root`` (those holding a config.yaml), batch directories excepted."""
    states = []
    for config_file in sorted(Path(root).rglob("config.yaml")):
        directory = config_file.parent
        if any(part.startswith("_") for part in directory.relative_to(root).parts):
            continue
        try:
            config = read_yaml(config_file)
            n_tasks = int(config["protocol_spec"]["n_tasks"])
            label = run_label(config)
            cost = len(config["seeds"]) * n_tasks * int(config["protocol_spec"]["steps_per_task"])
        except (OSError, yaml.YAMLError, ValueError, KeyError, TypeError):
            continue
        state = state_of_directory(directory, label, n_tasks)
        state.seed_steps = cost
        states.append(state)
    return states
