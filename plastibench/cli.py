"""The ``plastibench`` command line."""

from __future__ import annotations

import inspect
import json
import tempfile
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .cli_common import fail
from .cli_contrib import new_method_command, plot_command
from .cli_data import data_app
from .cli_leaderboard import compare_command, leaderboard_app
from .cli_sweep import status_command, sweep_command
from .compose import describe
from .data.paths import DataUnavailable
from .engine import Preempted
from .errors import CheckpointUnreadable, RunFileError, StartupInterrupted, UsageError
from .registry import METHODS, TASKS, UnknownName
from .runner import execute, plan, parse_overrides, resolve_capture, resolve_device, split_task_options

class FaultsGroup(typer.core.TyperGroup):
    """The top-level command group: user-facing errors that escape a command end in one line.

    UsageError exits 2; a damaged run file or checkpoint exits 1; Ctrl-C exits 130 (click would
    print "Aborted!" and exit 1).
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise fail(str(exc.args[0]) if exc.args else "bad input", 2) from None
        except RunFileError as exc:  # CheckpointUnreadable too: its message offers --restart
            raise fail(str(exc), 1) from None
        except StartupInterrupted:
            raise fail("interrupted before training started; nothing was saved", 130) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None


app = typer.Typer(
    cls=FaultsGroup,
    help="Benchmark plasticity-preserving methods for continual deep learning.\n\n"
         "Start with:  plastibench run --method bp,cbp --task scr --protocol short",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)
show_app = typer.Typer(help="Show one method or task in full.", no_args_is_help=True)
app.add_typer(show_app, name="show")
app.add_typer(leaderboard_app, name="leaderboard")
app.add_typer(data_app, name="data")
app.command("plot")(plot_command)
app.command("new-method")(new_method_command)
app.command("compare")(compare_command)
app.command("sweep")(sweep_command)
app.command("status")(status_command)
err = Console(stderr=True)


def _version(value: bool):
    if value:
        typer.echo(f"plastibench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """plastibench: many seeds at once, frozen protocols, confidence intervals."""


@app.command()
def run(
    method: Annotated[str, typer.Option("--method", "-m", help="Method name(s), comma-separated: bp,cbp; "
                                        "join with + to combine methods: cbp+l2. "
                                        "`plastibench list methods` shows them.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task stream, e.g. scr or pmnist.")],
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="paper (default), short or smoke; "
                                          "`plastibench list protocols` shows all.")] = "paper",
    seeds: Annotated[Optional[str], typer.Option(help="Seeds, e.g. 0-9, 2 or 0,3,5. Default: the protocol's "
                                                 "default count, from 0.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Hyperparameter override KEY=VALUE (every method "
                                            "that has KEY) or METHOD.KEY=VALUE; task.KEY=VALUE chooses a "
                                            "task option (`plastibench show task NAME`), which changes the "
                                            "protocol's hash; repeatable.")] = [],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Root of the run directories.")] = Path("runs"),
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root (else $PLASTIBENCH_DATA, else the "
                                                     "user cache dir).")] = None,
    verify: Annotated[bool, typer.Option(help="Check dataset checksums against the official files.")] = True,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.", min=0)] = 120.0,
    capture: Annotated[str, typer.Option(help="auto: replay captured steps (CUDA graphs) on CUDA, eager "
                                         "elsewhere; off: always eager; compile: torch.compile the step. "
                                         "Results agree to float rounding; recorded in environment.yaml.")
                       ] = "auto",
    restart: Annotated[bool, typer.Option("--restart", help="Discard the run directory's checkpoint, metrics "
                                          "and summary and start the run afresh (e.g. after a damaged "
                                          "checkpoint).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if the run is finished (in place, "
                                        "under the run's lock).")] = False,
    log_every: Annotated[float, typer.Option(help="When stderr is not a terminal (nohup, a batch log): seconds "
                                             "between plain progress lines (task, steps, seed-steps/s, "
                                             "ETA).", min=1)] = 60.0,
):
    """Train every seed of each method in one batched model; resume if interrupted.

    All seeds of a method run in lockstep as one batched network. Results go to
    OUT/TASK/PROTOCOL/METHOD-HASH/ (config, environment, per-seed metrics.csv, summary.yaml).
    HASH covers the configuration, a digest of the source files that define the run (method,
    task, engine and the plastibench modules they import) and the data checksums with their
    verified flag: changed code or data gets a new directory. Re-running the same command
    continues from the last checkpoint; finished runs are read, not redone (the table says
    "cached"), their summary recomputed from metrics.csv; --force recomputes them.

    Concurrent runs: each run directory is locked (RUN_DIR/.lock). A second process asking for a
    configuration that another one is computing waits for it, then reads its result; the same
    run is never computed twice at once.

    Examples:

      plastibench run -m bp,cbp -t scr -p short          # minutes on a laptop CPU

      plastibench run -m cbp -t pmnist --seeds 0-9 --device cuda --data-dir ~/data

      plastibench run -m cbp -t scr --set replacement_rate=1e-3 --out runs/sweep
    """
    methods = [m.strip() for m in method.split(",") if m.strip()]
    try:
        if not methods:
            raise UsageError(f"--method {method!r} names no method; write e.g. --method bp,cbp")
        dev = resolve_device(device)
        resolve_capture(capture, dev)
        task_options, method_items = split_task_options(set_)
        overrides = parse_overrides(method_items, methods)
        plans = [plan(m, task, protocol, seeds, overrides[m], out, task_options) for m in methods]
        _check_dir("--data-dir", data_dir)
        _check_dir("--out", out)
    except (UnknownName, UsageError) as exc:
        raise fail(str(exc.args[0]), 2)
    _check_writable(out)

    def waiting(directory):
        err.print(f"waiting: another process is computing {directory}; its result will be read")

    summaries = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("tasks {task.fields[tasks]}"),
               TextColumn("{task.fields[rate]} seed-steps/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    plain = not err.is_terminal  # a log file: plain lines every --log-every seconds instead of a bar
    with Progress(*columns, console=err, transient=False, disable=plain) as progress:
        for p in plans:
            n_seeds, proto = len(p.config["seeds"]), p.config["protocol_spec"]
            bar = progress.add_task(f"{p.method:>8} {task}/{protocol}", total=proto["n_tasks"] *
                                    proto["steps_per_task"], tasks=f"0/{proto['n_tasks']}", rate="-",
                                    visible=False)  # shown from the first progress: a refusal stays one line
            start = {"time": time.monotonic(), "steps": None}

            def on_progress(pr, bar=bar, start=start, n_seeds=n_seeds, n_tasks=proto["n_tasks"]):
                if start["steps"] is None:
                    start["steps"] = pr.steps_done
                dt = time.monotonic() - start["time"]
                rate = (pr.steps_done - start["steps"]) * n_seeds / dt if dt > 0 else 0.0
                progress.update(bar, total=pr.total_steps, completed=pr.steps_done, tasks=f"{pr.tasks_done}/{n_tasks}",
                                rate=f"{rate:,.0f}", visible=True)
                if plain and time.monotonic() >= start.get("next_log", 0.0):
                    start["next_log"] = time.monotonic() + log_every
                    _log_line(f"{p.method} {task}/{protocol}", pr, n_tasks, rate)

            try:
                summary = execute(p, device=dev, data_dir=data_dir, verify=verify,
                                  checkpoint_every=checkpoint_every, on_progress=on_progress, capture=capture,
                                  restart=restart, force=force, on_wait=waiting,
                                  report_every=min(5.0, log_every))
            except DataUnavailable as exc:
                raise fail(str(exc), 1)
            except UsageError as exc:  # e.g. the seeds do not fit in memory
                raise fail(str(exc.args[0]), 2)
            except RunFileError as exc:
                raise fail(str(exc), 1)
            except OSError as exc:
                raise fail(f"cannot read or write {exc.filename or p.directory}: {exc.strerror or exc}; check "
                           "--out and --data-dir (writable directories, free disk space)", 1)
            except StartupInterrupted:
                raise fail("interrupted before training started; nothing was saved", 130)
            except Preempted as exc:
                raise fail(f"received {exc.name}: checkpoint saved in {p.directory}; re-run the same command to "
                           "resume (a requeued Slurm job does)", exc.exit_code)
            except KeyboardInterrupt:
                if p.directory is None:
                    raise fail("interrupted while loading the data; nothing was computed.", 130)
                raise fail(f"interrupted; checkpoint saved in {p.directory}. Re-run the same command to "
                            "resume.", 130)
            progress.update(bar, completed=progress.tasks[bar].total, tasks=f"{proto['n_tasks']}/{proto['n_tasks']}",
                            visible=True)
            summaries.append((p, summary))
    _print_table(summaries)


def _log_line(name: str, pr, n_tasks: int, rate: float) -> None:
    """One plain progress line on stderr (for logs): task, steps, rate, elapsed (across resumes), ETA."""
    left = (pr.total_steps - pr.steps_done) * (pr.elapsed_s / pr.steps_done) if pr.steps_done else None
    clock = lambda s: "?" if s is None else time.strftime("%H:%M:%S", time.gmtime(s)) if s < 86400 \
        else f"{s / 86400:.1f} days"  # noqa: E731
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    err.print(f"[{stamp}] {name}: task {pr.tasks_done}/{n_tasks}, step {pr.steps_done:,}/{pr.total_steps:,} "
              f"({100 * pr.steps_done / max(1, pr.total_steps):.1f}%), {rate:,.0f} seed-steps/s, "
              f"elapsed {clock(pr.elapsed_s)}, ETA {clock(left)}", highlight=False, soft_wrap=True)


def _check_dir(option: str, path: Optional[Path]) -> None:
    """A directory option must not name a file (or lie under one)."""
    if path is None:
        return
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(f"{option} {path}: {part} is a file, not a directory; give a directory")
            return


def _check_writable(out: Path) -> None:
    """Create ``out`` and write a scratch file in it: a read-only place fails here in one line (exit 1)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise fail(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable directory "
                   "with --out", 1) from None


def _print_table(summaries) -> None:
    first = summaries[0][1]
    arrow = "higher is better" if first["higher_is_better"] else "lower is better"
    table = Table(title=f"{first['task']}/{first['protocol']} ({first['protocol_hash']}): "
                        f"{first['metric']}, {arrow}")
    for col in ("method", "mean", "95% CI", "seeds", "run directory", "result"):
        table.add_column(col)
    for p, s in summaries:
        ci = "n/a (1 seed)" if s["ci95"] is None else f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"
        seeds = str(s["n_seeds"]) + (f" ({s['n_diverged']} diverged)" if s.get("n_diverged") else "")
        table.add_row(p.method, f"{s['mean']:.4f}", ci, seeds, str(p.directory),
                      "cached" if p.cached else "computed")
    Console().print(table)


@app.command()
def bench(
    method: Annotated[str, typer.Option("--method", "-m", help="Method(s) to time, comma-separated.")] = "cbp",
    task: Annotated[str, typer.Option("--task", "-t", help="Task whose network and data are used.")] = "scr",
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="Protocol (sets net, batch, optimizer).")] = "paper",
    seeds: Annotated[str, typer.Option(help="Seed counts S to time, comma-separated.")] = "1,10,100",
    steps: Annotated[int, typer.Option(help="Timed steps per S.", min=1)] = 2000,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (they include the graph captures).",
                                        min=0)] = 200,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    capture: Annotated[str, typer.Option(help="Also time the captured step: auto (CUDA graphs on CUDA), "
                                         "cuda-graph, compile (torch.compile) or off (eager only).")] = "auto",
    baseline: Annotated[str, typer.Option(help="loop: also time one torch.nn model and optimizer per seed in "
                                          "a Python loop, as the reference trains (bp, cbp); none: skip.")] = "none",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write every measurement to this "
                                                     "JSON file.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root.")] = None,
    verify: Annotated[bool, typer.Option(help="Check dataset checksums.")] = True,
):
    """Measure training throughput (seed-steps/s) and operations per step for several seed counts S.

    Each S is timed eagerly and, where --capture gives a captured step, captured; with
    --baseline loop the reference's way (a Python loop over per-seed models) is timed beside it on
    the same network, batch and data, so the speed-up is a ratio from one run on one machine.

    Examples:

      plastibench bench -m bp,cbp -t scr --seeds 1,10,100 --baseline loop

      plastibench bench -m cbp -t pmnist --seeds 1,8,32 --steps 500 --warmup 50 --device cuda --json pm.json
    """
    from .bench import measure, measure_loop
    from .capture import resolve
    methods = [m.strip() for m in method.split(",") if m.strip()]
    try:
        dev = resolve_device(device)
        counts = [int(c) for c in seeds.split(",")]
        if not methods or any(c < 1 for c in counts):
            raise UsageError("--method needs a name and --seeds counts of at least 1, e.g. --seeds 1,10,100")
        if baseline not in ("none", "loop"):
            raise UsageError(f"--baseline {baseline!r}: choose none or loop")
        modes = ["off"] + ([capture] if resolve(capture, dev) != "eager" else [])
        for m in methods:
            METHODS.get(m)
        proto = TASKS.get(task).protocol(protocol)
        if warmup + 1 + steps > proto.steps_per_task:
            raise UsageError(f"{task}/{protocol} has {proto.steps_per_task} steps per task; ask for fewer "
                             f"(--warmup {warmup} + --steps {steps})")
    except (UnknownName, UsageError, ValueError) as exc:
        raise fail(str(exc.args[0]) if exc.args else str(exc), 2)
    table = Table(title=f"{task}/{protocol} on {dev}, {steps} timed steps (seed-steps/s)")
    for col in ("method", "seeds S", "mode", "seed-steps/s", "ops/step", "vs eager S=1", "vs loop"):
        table.add_column(col, justify="right")
    results = []
    try:
        for m in methods:
            eager_one = None
            for n in counts:
                loop = (measure_loop(m, task, protocol, n, steps=steps, warmup=warmup, device=dev,
                                     data_dir=data_dir, verify=verify) if baseline == "loop" else None)
                rows = [measure(m, task, protocol, n, steps=steps, warmup=warmup, device=dev, capture=mode,
                                data_dir=data_dir, verify=verify) for mode in modes]
                eager_one = eager_one or rows[0].seed_steps_per_s
                for r in rows + ([loop] if loop else []):
                    vs_loop = f"{r.seed_steps_per_s / loop.seed_steps_per_s:.1f}x" if loop and r is not loop else ""
                    table.add_row(m, str(n), r.mode, _rate(r.seed_steps_per_s),
                                  "-" if r.ops_per_step is None else str(r.ops_per_step),
                                  f"{r.seed_steps_per_s / eager_one:.2f}x", vs_loop)
                    results.append(r.as_dict())
    except DataUnavailable as exc:
        raise fail(str(exc), 1)
    except ValueError as exc:  # e.g. no loop baseline for this method and task
        raise fail(str(exc), 2)
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"device": str(dev), "torch": torch.__version__, "steps": steps,
                                        "warmup": warmup, "results": results}, indent=2) + "\n")


def _rate(value: float) -> str:
    """A throughput with three significant digits at least (ResNet-18 on a CPU runs < 1 step/s)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class What(str, Enum):
    methods = "methods"
    tasks = "tasks"
    protocols = "protocols"


@app.command("list")
def list_(what: Annotated[What, typer.Argument(help="methods, tasks or protocols")],
          as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False):
    """List registered methods, tasks or protocols."""
    if what is What.methods:
        rows = [{"name": n, "summary": METHODS.get(n).summary, "paper": METHODS.get(n).paper}
                for n in METHODS.names()]
    elif what is What.tasks:
        rows = [{"name": n, "summary": TASKS.get(n).summary, "protocols": sorted(TASKS.get(n).protocols)}
                for n in TASKS.names()]
    else:
        rows = [{"task": n, "name": p.name, "hash": p.hash, "tasks": p.n_tasks, "steps_per_task": p.steps_per_task,
                 "metric": p.metric, "description": p.description}
                for n in TASKS.names() for p in TASKS.get(n).protocols.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row.values()))
    Console().print(table)


def _lookup(registry, name: str):
    try:
        return registry.get(name)
    except (UnknownName, UsageError) as exc:  # UsageError: a composition that cannot be (cbp+l2)
        raise fail(str(exc.args[0]), 2)


def _module_doc(cls) -> str:
    """The docstring of the file that defines ``cls``: where each method states its rule."""
    return inspect.getdoc(inspect.getmodule(cls)) or cls.summary


@show_app.command("method")
def show_method(name: str):
    """A method's update rule, paper and default hyperparameters (with their ranges) for every task."""
    cls = _lookup(METHODS, name)
    console = Console()
    console.print(f"[bold]{name}[/]: {cls.summary}\n[italic]{cls.paper}[/]\n")
    console.print(describe(cls), highlight=False, markup=False)
    if not cls.hparameter_names():
        return
    names, default = sorted(cls.hparameter_names()), cls.hparams_for("(any)")
    table = Table(title="hyperparameters")
    for col in ("hyperparameter", "range", "default"):
        table.add_column(col)
    for key in names:
        bound = cls.bounds.get(key)
        table.add_row(key, "" if bound is None else str(bound), str(default.get(key, "")))
    console.print(table)
    per_task = Table(title="defaults per task, where they differ from the default")
    for col in ("task", "hyperparameter", "value"):
        per_task.add_column(col)
    for task in TASKS.names():
        values = cls.hparams_for(task)
        changed = [key for key in names if key in values and values[key] != default.get(key)]
        for i, key in enumerate(changed):
            per_task.add_row(task if i == 0 else "", key, str(values[key]), end_section=i == len(changed) - 1)
    if per_task.row_count:
        console.print(per_task)


@show_app.command("task")
def show_task(name: str):
    """A task's description, its options (--set task.KEY=VALUE) and its protocols with their hashes."""
    cls = _lookup(TASKS, name)
    console = Console()
    console.print(_module_doc(cls), highlight=False, markup=False)
    for key, values in cls.options.items():
        console.print(f"\noption task.{key}: {' | '.join(values)} (default {values[0]})", highlight=False,
                      markup=False)
    for p in cls.protocols.values():
        console.print(f"\n[bold]{p.name}[/] ({p.hash}): {p.description}")
        console.print(json.dumps(p.to_dict(), indent=2), highlight=False, markup=False)
