"""One unit of a sweep's work: a batch of configurations, run wherever an executor sends it.

:func:`run_job` is what every executor calls (in this process, a joblib worker, a Slurm job or a
Ray task): it trains the batch, or reads it when finished. A job that fails leaves ``error.txt``
(a one-line summary, then the traceback) in each of its run directories, which ``plastibench status`` shows and a re-run
removes before it retries. A preempted job (SIGTERM, SIGUSR1/2) has checkpointed and raises
:class:`plastibench.engine.Preempted`, which is not a failure: the requeued job resumes.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batched import execute_batch
from .engine import Preempted
from .results import config_hash
from .runner import Plan, resolve_device

ERROR_FILE = "error.txt"
FAILED = "_failed"


@dataclass
class Job:
    """Plans of one batch and how to run them (``options`` are :func:`execute_batch`'s keywords)."""

    plans: list[Plan]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        first = self.plans[0].config
        return f"{self.plans[0].method} {first['task']}/{first['protocol']} ×{len(self.plans)}"


def error_paths(p: Plan) -> list[Path]:
    """Where a failure of ``p`` is recorded: its run directory, and (for a plan whose data never
    loaded, so that it has no directory) a file named by its configuration without the data."""
    config = {k: v for k, v in p.config.items() if k != "data"}
    fallback = Path(p.out) / p.config["task"] / p.config["protocol"] / FAILED / f"{p.method}-{config_hash(config)}.txt"
    return [fallback] if p.directory is None else [p.directory / ERROR_FILE, fallback]


def clear_errors(p: Plan) -> None:
    for path in error_paths(p):
        path.unlink(missing_ok=True)


def record_error(p: Plan, text: str) -> None:
    path = error_paths(p)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def error_summary(exc: BaseException) -> str:
    """``ExceptionType: the first line of its message``: the first line of error.txt."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def run_job(job: Job, device: str = "auto", threads: int | None = None, on_progress=None) -> dict[str, Any]:
    """Train (or read) the job's batch on ``device`` (auto, cpu, cuda, cuda:K) (``on_progress``: see
    :class:`plastibench.engine.Progress`); returns each plan's directory, mean and whether it was
    cached. ``threads`` is the executors' argument: they have already set torch's thread count."""
    for p in job.plans:
        clear_errors(p)
    try:
        options = job.options if on_progress is None else {**job.options, "on_progress": on_progress}
        summaries = execute_batch(job.plans, device=resolve_device(device), **options)
    except (Preempted, KeyboardInterrupt):
        raise
    except Exception as exc:
        text = f"{error_summary(exc)}\n\n{traceback.format_exc()}"
        for p in job.plans:
            record_error(p, text)
        raise
    return {"directories": [str(p.directory) for p in job.plans], "means": [s["mean"] for s in summaries],
            "cached": [bool(p.cached) for p in job.plans]}

