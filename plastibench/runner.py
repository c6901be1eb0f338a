"""From names on the command line to finished run directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .compose import accepts
from .capture import resolve
from .engine import Engine, Progress
from .errors import RunFileError, StartupInterrupted, UsageError
from .identity import code_digest, run_lock
from .memory import check_fits
from .protocol import Protocol
from .registry import METHODS, TASKS
from .results import (ResultError, environment, load_summary, run_config, run_dir, write_end_of_run,
                      write_yaml)
from .task import Task, require_boundaries


MAX_SEEDS = 1_000_000  # past this even the list of seeds is a burden; memory.check_fits refuses far fewer


def parse_seeds(text: str | None, default_count: int) -> list[int]:
    """``"0-9"``, ``"0,3,5"``, ``"2"`` or ``"0-3,8"`` -> sorted distinct seeds; None -> range(default)."""
    if text is None:
        return list(range(default_count))
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if a < 0 or b < a:
                raise ValueError
            if b - a + len(seeds) >= MAX_SEEDS:
                raise UsageError(f"--seeds {text!r} asks for over {MAX_SEEDS} seeds; run far fewer at once")
            seeds.update(range(a, b + 1))
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"--seeds {text!r} is not a list of seeds; write e.g. 0-9, 2 or 0,3,5") from None
    return sorted(seeds)


def split_task_options(items: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``--set`` items -> (``task.KEY=VALUE`` as {KEY: VALUE}, the method overrides left)."""
    options, rest = {}, []
    for item in items:
        key, eq, value = item.partition("=")
        if key.startswith("task."):
            if not eq or key == "task.":
                raise UsageError(f"--set {item!r}: write task.KEY=VALUE")
            options[key[len("task."):]] = value
        else:
            rest.append(item)
    return options, rest


def task_protocol(task_cls: type[Task], name: str, options: Mapping[str, str]) -> Protocol:
    """The registered protocol ``name`` of ``task_cls`` with the task options chosen."""
    try:
        return task_cls.with_options(task_cls.protocol(name), options)
    except ValueError as exc:
        raise UsageError(f"--set task.*: {exc}") from None


def parse_overrides(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """``KEY=VALUE`` (every method that has KEY) or ``METHOD.KEY=VALUE`` -> per-method overrides.

    A composition (``cbp+l2``) takes ``cbp+l2.cbp.KEY``, ``cbp.KEY`` and an unqualified ``KEY`` that
    exactly one of its parts has; ``cbp.KEY`` also reaches a plain ``cbp`` run beside it.
    """
    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: write KEY=VALUE or METHOD.KEY=VALUE")
        takers = []
        for m in methods:
            if key.startswith(m + "."):
                out[m][key[len(m) + 1:]] = value
                takers.append(m)
                continue
            cls = METHODS.get(m)
            try:
                # a composition takes PART.KEY for each of its parts (a wrong KEY is reported by it)
                if accepts(cls, key) or key.partition(".")[0] in {p.name for p in getattr(cls, "parts", ())}:
                    out[m][key] = value
                    takers.append(m)
            except ValueError as exc:
                raise UsageError(f"--set {item!r}: {exc}") from None
        if takers:
            continue
        target, dot, _ = key.partition(".")
        if dot:
            raise UsageError(f"--set {item!r}: method {target!r} is not among --method {','.join(methods)}")
        raise UsageError(f"--set {item!r}: none of {', '.join(methods)} has a hyperparameter {key!r}; "
                         "`plastibench show method NAME` lists them")
    return out


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:K`` -> a device that exists here (UsageError otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, colon, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise UsageError(f"--device {name!r}: choose auto, cpu, cuda or cuda:K")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: no CUDA device is visible to PyTorch; use --device cpu or auto")
        if colon and int(index) >= count:
            raise UsageError(f"--device {name}: PyTorch sees {count} CUDA device(s), numbered from 0")
    return torch.device(name)


def resolve_capture(mode: str, device: torch.device) -> str:
    """The stepper ``--capture mode`` gives on ``device`` (eager, cuda-graph or compile)."""
    try:
        return resolve(mode, device)
    except ValueError as exc:
        raise UsageError(f"--capture {mode}: {exc}") from None


@dataclass
class Plan:
    """One configuration to run: its config, directory and whether it is already finished.

    The directory is named by the hash of the whole configuration, which includes the code digest
    and the data record (checksums, verified flag). A task with data has its record only once the
    data is loaded, so :func:`execute` completes such a plan (``directory`` is None until then).
    ``cached`` tells, after :func:`execute`, whether the result was only read.
    """

    method: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    directory: Path | None = None
    out: Path | None = None
    cached: bool | None = None

    @property
    def done(self) -> bool:
        return self.directory is not None and (self.directory / "summary.yaml").exists()

    def resolve(self, data: Mapping[str, Any]) -> None:
        """Complete the identity with the data record and name the directory after it."""
        self.config["data"] = dict(data)
        if self.out is None:
            raise ValueError("a plan without --out cannot name its directory")
        self.directory = run_dir(self.out, self.config)


def has_data(task_cls: type[Task]) -> bool:
    """Whether the task reads data (its data record is known only once the data is loaded)."""
    return getattr(task_cls, "data_record", None) is not Task.data_record


def plan(method: str, task: str, protocol: str, seeds: str | None, overrides: Mapping[str, str],
         out: Path, task_options: Mapping[str, str] | None = None) -> Plan:
    method_cls, task_cls = METHODS.get(method), TASKS.get(task)
    proto = task_protocol(task_cls, protocol, task_options or {})
    require_boundaries(method_cls, task_cls, proto)
    try:
        hparams = method_cls.hparams_for(task, overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = run_config(method, hparams, proto, parse_seeds(seeds, proto.default_seeds))
    chosen = {k: v for k, v in proto.settings.items() if k in task_cls.options}
    if chosen:  # absent when none is chosen, so that the identities of earlier runs stay
        config["task_options"] = chosen
    config["code_digest"] = code_digest(method_cls, task_cls)
    p = Plan(method, hparams, config, None, Path(out))
    if not has_data(task_cls):
        p.resolve({})
    return p


def clear_results(directory: Path) -> None:
    """Remove a run's results so that it is computed afresh (``run --force``); the caller holds the
    run's lock. summary.yaml goes first, so that the run is never finished with other files gone."""
    for name in ("summary.yaml", "final.yaml", "checkpoint.pt", "metrics.csv"):
        (directory / name).unlink(missing_ok=True)


def remove_if_unused(directory: Path) -> None:
    """Remove a run directory that holds nothing but its lock (a run refused before it started)."""
    if {f.name for f in directory.iterdir()} <= {".lock"}:
        (directory / ".lock").unlink(missing_ok=True)
        directory.rmdir()


RESTART_FILES = ("checkpoint.pt", "metrics.csv", "summary.yaml")


def discard(p: Plan) -> None:
    """``--restart``: remove the plan's checkpoint, metrics and summary so that it runs afresh."""
    for name in RESTART_FILES:
        (p.directory / name).unlink(missing_ok=True)


def execute(p: Plan, *, device: torch.device, data_dir=None, verify: bool = True, checkpoint_every: float = 120.0,
            on_progress: Callable[[Progress], None] = lambda _: None, capture: str = "off", restart: bool = False,
            force: bool = False, on_wait: Callable[[Path], None] | None = None,
            report_every: float = 5.0) -> dict[str, Any]:
    """Run (or resume) one plan and return its summary; a finished plan is read, not recomputed.

    A run that cannot fit in the device's free memory is refused (UsageError) before anything is
    built; Ctrl-C before the training loop raises :class:`StartupInterrupted` (nothing saved). The
    run directory is locked while it is checked and computed: a second process asking for the same
    configuration waits (``on_wait(directory)`` is called first), then reads the first one's result.
    ``restart`` discards the directory's checkpoint, metrics and summary first; ``force`` recomputes a
    finished run in place. ``p.cached`` tells whether the result was only read.
    """
    task_cls, method_cls = TASKS.get(p.config["task"]), METHODS.get(p.method)
    proto = task_protocol(task_cls, p.config["protocol"], p.config.get("task_options", {}))
    task = None
    try:
        check_fits(p.method, method_cls, p.hparams, task_cls, proto, len(p.config["seeds"]), device,
                   data_dir=data_dir)
        if "data" not in p.config:  # load the data once: its record names the directory, the engine uses it
            seeds = torch.tensor(p.config["seeds"], dtype=torch.int64, device=device)
            task = task_cls(proto, seeds, data_dir=data_dir, verify=verify)
            p.resolve(task.data_record())
    except KeyboardInterrupt:
        raise StartupInterrupted() from None
    with run_lock(p.directory, None if on_wait is None else lambda: on_wait(p.directory)):
        if restart:
            discard(p)
        if p.done and not force:
            try:
                summary = load_summary(p.directory, locked=True)
                p.cached = True
                return summary
            except ResultError:  # summary.yaml without full metrics: finish (resume) the run instead
                (p.directory / "summary.yaml").unlink()
        if force:
            clear_results(p.directory)
        try:
            build_task = task_cls if task is None else (lambda *args, **kwargs: task)
            try:
                engine = Engine(method_cls, p.hparams, build_task, proto, p.config["seeds"], device=device,
                                directory=p.directory, config=p.config, data_dir=data_dir, verify=verify,
                                checkpoint_every=checkpoint_every, capture=capture, report_every=report_every)
            except (UsageError, RunFileError, ResultError):
                raise
            except ValueError as exc:  # a configuration the method or task refuses once built
                remove_if_unused(p.directory)
                raise UsageError(f"{p.method} on {p.config['task']}/{p.config['protocol']}: {exc}") from None
            if engine.task.data_record() != p.config["data"]:
                raise UsageError(f"the data changed since this run was planned ({p.directory}); run it again")
            if not engine.resume():
                write_yaml(p.directory / "config.yaml", p.config)
            env = environment(device, engine.task.data_record())
            env["capture"] = {"asked": capture, "used": engine.stepper.mode,
                              "method_capturable": bool(getattr(engine.method, "capturable", True))}
            write_yaml(p.directory / "environment.yaml", env)
        except KeyboardInterrupt:
            raise StartupInterrupted() from None
        write_end_of_run(p.directory, engine.run(on_progress))
        p.cached = False
        return load_summary(p.directory, locked=True)
