"""Several configurations of one method trained as one batched model, each in its own run directory.

Configurations that differ only in hyperparameters their method declares ``vectorizable`` (a sweep's
batch, :func:`plastibench.sweep.batches`) become *members* of one model: member (c, s) is seed s of
configuration c, its vectorizable hyperparameters a per-member tensor (:mod:`plastibench.members`).
Each configuration still gets the run directory ``plastibench run`` would write (config.yaml,
environment.yaml, metrics.csv, summary.yaml, final.yaml), so a later ``run`` of it reads the result.
The batch's checkpoint lives in ``OUT/TASK/PROTOCOL/_batched/METHOD-HASH/`` (HASH over the member
directories), where a resumed batch finds it; it is removed once every member is written, and
``members.yaml`` there names the members. Every configuration's metrics.csv is written at every
checkpoint, so ``plastibench status`` sees each one's progress.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .engine import Engine, Progress
from .errors import RunFileError, StartupInterrupted, UsageError
from .identity import run_lock
from .members import member_hparams
from .memory import check_fits
from .registry import METHODS, TASKS
from .results import (ResultError, config_hash, environment, load_summary, save_checkpoint, summarise,
                      write_end_of_run, write_metrics, write_yaml)
from .runner import Plan, has_data, remove_if_unused, task_protocol

BATCHED = "_batched"


def batch_directory(plans: Sequence[Plan]) -> Path:
    """Where a batch of (resolved) plans keeps its checkpoint."""
    first = plans[0]
    digest = config_hash({"members": [p.directory.name for p in plans]})
    return Path(first.out) / first.config["task"] / first.config["protocol"] / BATCHED / f"{first.method}-{digest}"


class MemberEngine(Engine):
    """An engine over the members of several plans; their results go to the plans' directories."""

    def __init__(self, plans: Sequence[Plan], build_task, protocol, *, device: torch.device, directory: Path,
                 **options):
        self.plans = list(plans)
        self.n_seeds = len(plans[0].config["seeds"])
        method_cls = METHODS.get(plans[0].method)
        seeds = [s for p in plans for s in p.config["seeds"]]
        try:
            hparams = member_hparams([p.hparams for p in plans], self.n_seeds,
                                     getattr(method_cls, "vectorizable", frozenset()), device)
        except ValueError as exc:
            raise UsageError(f"{plans[0].method}: {exc}") from None
        super().__init__(method_cls, hparams, build_task, protocol, seeds, device=device, directory=directory,
                         config={"members": [p.config for p in plans]}, **options)

    def member_values(self, values: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Configuration ``i``'s slice ``[n_seeds]`` of per-member arrays."""
        return {k: v[i * self.n_seeds:(i + 1) * self.n_seeds] for k, v in values.items()}

    def member_records(self, i: int) -> list[dict[str, np.ndarray]]:
        return [self.member_values(r, i) for r in self.records]

    def checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state_dict())
        for i, p in enumerate(self.plans):
            write_metrics(p.directory / "metrics.csv", p.config["seeds"], self.member_records(i))

    def finish(self, final: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        summaries = []
        for i, p in enumerate(self.plans):
            summary = summarise(p.config, self.protocol, self.member_records(i), self.member_values(final, i),
                                self.wall_time)
            write_yaml(p.directory / "summary.yaml", summary)
            summaries.append(summary)
        return summaries


def execute_batch(plans: Sequence[Plan], *, device: torch.device, data_dir=None, verify: bool = True,
                  checkpoint_every: float = 120.0, capture: str = "off",
                  on_progress: Callable[[Progress], None] = lambda _: None,
                  report_every: float = 5.0) -> list[dict[str, Any]]:
    """Run (or resume) plans of one batch as one model; return their summaries, in order.

    Plans already finished are read, not recomputed (``plan.cached``); the others are trained
    together, under the locks of their directories and of the batch directory.
    """
    plans = list(plans)
    first = plans[0]
    task_cls, method_cls = TASKS.get(first.config["task"]), METHODS.get(first.method)
    proto = task_protocol(task_cls, first.config["protocol"], first.config.get("task_options", {}))
    task = None
    try:
        check_fits(first.method, method_cls, first.hparams, task_cls, proto,
                   sum(len(p.config["seeds"]) for p in plans), device, data_dir=data_dir)
        if has_data(task_cls) and any(p.directory is None for p in plans):
            seeds = torch.tensor([s for p in plans for s in p.config["seeds"]], dtype=torch.int64, device=device)
            task = task_cls(proto, seeds, data_dir=data_dir, verify=verify)
            for p in plans:
                p.resolve(task.data_record())
    except KeyboardInterrupt:
        raise StartupInterrupted() from None
    with ExitStack() as locks:
        for p in sorted(plans, key=lambda p: str(p.directory)):
            locks.enter_context(run_lock(p.directory))
        summaries: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(plans):
            if p.done:
                try:
                    summaries[i] = load_summary(p.directory, locked=True)
                    p.cached = True
                except ResultError:  # summary.yaml without full metrics: compute it again
                    (p.directory / "summary.yaml").unlink()
        todo = [p for i, p in enumerate(plans) if i not in summaries]
        if todo:
            for p, summary in zip(todo, _train(todo, task, proto, device, data_dir, verify, checkpoint_every,
                                               capture, on_progress, report_every, locks)):
                summaries[plans.index(p)] = summary
        return [summaries[i] for i in range(len(plans))]


def _train(plans: list[Plan], task, proto, device, data_dir, verify, checkpoint_every, capture, on_progress,
           report_every, locks: ExitStack) -> list[dict[str, Any]]:
    """Train the unfinished plans of a batch together; their locks are held."""
    directory = batch_directory(plans)
    locks.enter_context(run_lock(directory))
    task_cls = TASKS.get(plans[0].config["task"])
    build_task = task_cls if task is None else (lambda *args, **kwargs: task)
    try:
        try:
            engine = MemberEngine(plans, build_task, proto, device=device, directory=directory, data_dir=data_dir,
                                  verify=verify, checkpoint_every=checkpoint_every, capture=capture,
                                  report_every=report_every)
        except (UsageError, RunFileError, ResultError):
            raise
        except ValueError as exc:  # a configuration the method or task refuses once built
            for p in plans:
                remove_if_unused(p.directory)
            raise UsageError(f"{plans[0].method} on {proto.task}/{proto.name}: {exc}") from None
        for p in plans:
            if engine.task.data_record() != p.config["data"]:
                raise UsageError(f"the data changed since this run was planned ({p.directory}); run it again")
        engine.resume()
        env = environment(device, engine.task.data_record())
        env["capture"] = {"asked": capture, "used": engine.stepper.mode,
                          "method_capturable": bool(getattr(engine.method, "capturable", True))}
        env["batched"] = {"directory": str(directory), "configurations": len(plans),
                          "members": len(engine.seeds)}
        for p in plans:
            write_yaml(p.directory / "config.yaml", p.config)
            write_yaml(p.directory / "environment.yaml", env)
        write_yaml(directory / "members.yaml", {"members": [str(p.directory) for p in plans]})
    except KeyboardInterrupt:
        raise StartupInterrupted() from None
    results = engine.run(on_progress)
    out = []
    for p, summary in zip(plans, results):
        write_end_of_run(p.directory, summary)
        p.cached = False
        out.append(load_summary(p.directory, locked=True))
    engine.checkpoint_path.unlink(missing_ok=True)  # every member is written: the batch's state is not needed
    return out
