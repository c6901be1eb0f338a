"""``plastibench sweep`` and ``plastibench status``: a grid of configurations, run and watched."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_common import fail
from .errors import UsageError
from .engine import Preempted
from .jobs import Job, error_summary, run_job
from .capture import CAPTURE_MODES
from .runner import resolve_device
from .select import select_and_report, write_selection
from .status import CHECKPOINTED, FAILED, FINISHED, NOT_STARTED, RUNNING, RunState, state_of, states_under
from .sweep import Configuration, batches, expand, load_spec

err = Console(stderr=True)
STYLE = {FINISHED: "green", RUNNING: "cyan", CHECKPOINTED: "yellow", FAILED: "red", NOT_STARTED: "dim"}  # in display order


class Executor(str, Enum):
    local = "local"
    slurm = "slurm"
    ray = "ray"


def _states(configurations: list[Configuration], groups: list[list[Configuration]]) -> list[tuple[int, RunState]]:
    where = {id(c): i for i, group in enumerate(groups) for c in group}
    return [(where[id(c)], state_of(c.plan, c.label)) for c in configurations]


def print_states(title: str, rows: list[tuple[int | None, RunState]]) -> None:
    table = Table(title=title)
    for col in ("model", "configuration", "seed-steps", "state", "detail", "run directory"):
        table.add_column(col, overflow="fold")
    for model, s in rows:
        table.add_row("" if model is None else str(model + 1), s.label, f"{s.seed_steps:,}",
                      f"[{STYLE[s.state]}]{s.progress}[/]", s.detail, "" if s.directory is None else str(s.directory))
    out = Console()  # made per call: the width is the terminal's (or COLUMNS) now, not at import
    out.print(table)
    counts = {state: sum(s.state == state for _, s in rows) for state in STYLE}
    out.print(", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no configuration")


def _devices(device: str) -> list[str]:
    """The devices local jobs go round-robin over: every visible GPU for cuda/auto, else the CPU."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        return [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return [str(dev)]


def run_jobs(jobs: list[Job], executor: Executor, *, n_jobs: int, device: str, slurm: dict, ray: dict,
             folder: Path) -> list[tuple[Job, str | None]]:
    """Run every job on the executor; returns (job, the last error line or None) per job."""
    if executor is Executor.local and n_jobs == 1:
        return _run_here(jobs, device)
    from . import executors  # imported only when needed: submitit and ray are optional
    if executor is Executor.local:
        outcomes = executors.run_local(run_job, jobs, jobs=n_jobs, devices=_devices(device))
    elif executor is Executor.slurm:
        outcomes = executors.run_slurm(run_job, jobs, folder=folder, log_dirs=[_log_dir(j) for j in jobs], **slurm)
    else:
        outcomes = executors.run_ray(run_job, jobs, **ray)
    return [(jobs[o.index], None if o.ok else o.error) for o in outcomes]


def _log_dir(job: Job) -> Path | None:
    """The first run directory of a job, where its executor logs go (None until its data is loaded)."""
    return job.plans[0].directory


def _run_here(jobs: list[Job], device: str) -> list[tuple[Job, str | None]]:
    """Jobs one after the other in this process, with a bar for the sweep and one for the job's steps."""
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        overall = progress.add_task("batched models", total=len(jobs))
        steps = progress.add_task("steps", total=None)
        for job in jobs:
            progress.update(steps, description=job.label, completed=0, total=None)

            def on_progress(pr, steps=steps):
                progress.update(steps, completed=pr.steps_done, total=pr.total_steps)
            try:
                run_job(job, device, on_progress=on_progress)
                results.append((job, None))
            except Preempted as exc:
                raise fail(f"received {exc.name}: the batched model in flight checkpointed; re-run the same "
                           "command to resume", exc.exit_code) from None
            except KeyboardInterrupt:
                raise fail("interrupted; the batched model in flight checkpointed. Re-run the same command to "
                           "resume.", 130) from None
            except Exception as exc:  # noqa: BLE001 - one failing job must not stop the others
                results.append((job, error_summary(exc)))
                err.print(f"[red]failed[/]: {job.label}: {results[-1][1]}", highlight=False)
            progress.advance(overall)
    return results


def sweep_command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="A sweep spec (YAML); see examples/sweep.yaml.")],
    out: Annotated[Optional[Path], typer.Option(help="Root of the run directories (else the spec's `out`, else "
                                                "runs); the same as `run --out`, so both share results.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the configurations, their batched models, "
                                          "costs in seed-steps and states; run nothing.")] = False,
    select: Annotated[bool, typer.Option("--select", help="Tune: run the grid on the spec's tune_seeds, choose "
                                         "one configuration per method by its select rule, then run it on "
                                         "report_seeds.")] = False,
    executor: Annotated[Executor, typer.Option(help="local (joblib processes), slurm (submitit job "
                                               "arrays) or ray.")] = Executor.local,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="local: processes at once (each gets a GPU "
                                      "round-robin, or a share of the CPU cores).")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:K (local jobs).")] = "auto",
    batch_grid: Annotated[bool, typer.Option(help="Train configurations that differ only in vectorizable "
                                             "hyperparameters as members of one batched model.")] = True,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root, as in `run`.")] = None,
    verify: Annotated[bool, typer.Option(help="Check dataset checksums.")] = True,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.", min=0)] = 120.0,
    capture: Annotated[str, typer.Option(help="auto, off, cuda-graph or compile, as in `run`.")] = "auto",
    slurm_partition: Annotated[Optional[str], typer.Option(help="slurm: the partition.")] = None,
    slurm_time: Annotated[int, typer.Option(help="slurm: minutes per job; a job that reaches it checkpoints "
                                            "and requeues.", min=1)] = 60,
    slurm_gpus_per_job: Annotated[int, typer.Option(help="slurm: GPUs per job.", min=0)] = 0,
    slurm_array_parallelism: Annotated[int, typer.Option(help="slurm: array jobs running at once.", min=1)] = 64,
    slurm_setup: Annotated[list[str], typer.Option(help="slurm: a shell line run before each job (module load "
                                                   "..., source venv/bin/activate); repeatable.")] = [],
    ray_address: Annotated[Optional[str], typer.Option(help="ray: the cluster's address (else a local cluster "
                                                       "is started for the call).")] = None,
    ray_num_cpus: Annotated[float, typer.Option(help="ray: CPUs per task.", min=0)] = 1.0,
    ray_num_gpus: Annotated[float, typer.Option(help="ray: GPUs per task.", min=0)] = 0.0,
):
    """Run a grid of configurations: tasks x protocols x methods x hyperparameters x seeds.

    Each configuration is what `plastibench run` computes with the same --set, in the same run
    directory: finished ones are read, not redone, and a re-run resumes or retries the others.
    Configurations that differ only in hyperparameters their method can vary per member (e.g.
    cbp.replacement_rate, l2.weight_decay) train as one batched model beside the seeds. A failing
    configuration does not stop the others; its traceback is kept in its directory (error.txt).

    Examples:

      plastibench sweep examples/sweep.yaml --dry-run

      plastibench sweep examples/sweep.yaml -j 2

      plastibench sweep examples/sweep.yaml --executor slurm --slurm-partition gpu --slurm-gpus-per-job 1
    """
    try:
        spec = load_spec(spec_path)
        root = out or spec.out or Path("runs")
        if capture not in CAPTURE_MODES:
            raise UsageError(f"--capture {capture}: choose one of {', '.join(CAPTURE_MODES)}")
        if select:
            if not (spec.tune_seeds and spec.report_seeds):
                raise UsageError(f"{spec_path}: --select needs tune_seeds and report_seeds in the spec")
            configurations = expand(spec, root, spec.tune_seeds)
        else:
            configurations = expand(spec, root)
    except UsageError as exc:
        raise fail(str(exc.args[0]), 2)
    groups = batches(configurations, batch_grid)
    if dry_run:
        rows = _states(configurations, groups)
        print_states(f"{spec.name}: {len(configurations)} configurations in {len(groups)} batched models", rows)
        total = sum(s.seed_steps for _, s in rows if s.state != FINISHED)
        Console().print(f"to compute: {total:,} seed-steps")
        return
    options = dict(data_dir=data_dir, verify=verify, checkpoint_every=checkpoint_every, capture=capture)
    slurm = dict(partition=slurm_partition, time_min=slurm_time, gpus_per_job=slurm_gpus_per_job,
                 array_parallelism=slurm_array_parallelism, setup=list(slurm_setup))
    ray = dict(address=ray_address, num_cpus=ray_num_cpus, num_gpus=ray_num_gpus)

    def run(groups_to_run: list[list[Configuration]]) -> int:
        todo = [Job([c.plan for c in group], options) for group in groups_to_run]
        results = run_jobs(todo, executor, n_jobs=jobs, device=device, slurm=slurm, ray=ray,
                           folder=root / "_sweeps" / spec.name / executor.value)
        return sum(error is not None for _, error in results)

    failed = run(groups)
    rows = _states(configurations, groups)
    print_states(f"{spec.name}: {len(configurations)} configurations", rows)
    if select and not failed:
        try:
            report = select_and_report(spec, root, configurations)
        except UsageError as exc:
            raise fail(str(exc.args[0]), 2)
        failed += run(batches(report, batch_grid))
        write_selection(report)
        print_states(f"{spec.name}: chosen configurations on the report seeds {spec.report_seeds}",
                     _states(report, batches(report, batch_grid)))
    if failed:
        raise fail(f"{failed} batched model(s) failed; their errors are in their run directories "
                   f"(`plastibench status {spec_path}`); re-run the same command to retry them", 1)


def status_command(
    target: Annotated[Path, typer.Argument(metavar="SPEC|DIR", help="A sweep spec, or a directory of runs.")
                      ] = Path("runs"),
    out: Annotated[Optional[Path], typer.Option(help="With a SPEC: the root of its run directories (else the "
                                                "spec's `out`, else runs).")] = None,
):
    """Show where each configuration stands: finished, running, checkpointed at task k, not started,
    or failed (with the last line of its error).

    Examples:

      plastibench status examples/sweep.yaml

      plastibench status runs/scr
    """
    try:
        if target.is_dir():
            rows = [(None, s) for s in states_under(target)]
            title = f"runs under {target}"
        elif target.exists():
            spec = load_spec(target)
            root = out or spec.out or Path("runs")
            configurations = expand(spec, root)
            rows = _states(configurations, batches(configurations))
            title = f"{spec.name}: {len(configurations)} configurations"
        else:
            raise UsageError(f"{target}: no such sweep spec or directory")
    except UsageError as exc:
        raise fail(str(exc.args[0]), 2)
    print_states(title, rows)
