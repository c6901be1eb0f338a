"""The run directory: raw per-seed streams first, every aggregate recomputed from them.

``<out>/<task>/<protocol>/<method>-<config hash>/`` holds

* ``config.yaml``      the resolved configuration (method, hyperparameters, protocol, seeds) and
  what else the result belongs to: ``code_digest`` (SHA-256 of the source files that define the
  run, :mod:`plastibench.identity`) and ``data`` (the data checksums and their verified flag);
  all of it is hashed into the directory name;
* ``environment.yaml`` versions, device, git commit and ``git_dirty``, data checksums, command
  line, UTC timestamp, host;
* ``metrics.csv``      per-seed streams in long form: ``seed,task_index,metric,value``;
* ``checkpoint.pt``    the latest checkpoint (engine, net, optimizer, method and task state);
* ``final.yaml``       the end-of-run measurements that ``metrics.csv`` cannot give back
  (final diagnostics, wall time);
* ``summary.yaml``     written last: per-seed primary metric, mean and Student-t 95% CI. Its
  existence marks the run finished, but its content is never trusted: :func:`load_summary`
  recomputes it from ``metrics.csv`` and ``config.yaml`` (and ``final.yaml``) on every read;
* ``.lock``            the run's lock (:func:`plastibench.identity.run_lock`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from . import __version__
from .divergence import diverged_seeds, scored
from .errors import CheckpointUnreadable, RunFileError
from .protocol import OptimizerSpec, Protocol
from .stats import mean_ci95


def config_hash(config: Mapping[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def run_config(method: str, hparams: Mapping[str, Any], protocol: Protocol, seeds: Sequence[int]) -> dict:
    return {
        "method": method,
        "hparams": dict(hparams),
        "task": protocol.task,
        "protocol": protocol.name,
        "protocol_hash": protocol.hash,
        "protocol_spec": protocol.to_dict(),
        "seeds": list(seeds),
        "plastibench_version": __version__,
    }


def run_dir(out: Path, config: Mapping[str, Any]) -> Path:
    return Path(out) / config["task"] / config["protocol"] / f"{config['method']}-{config_hash(config)}"


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file and a rename: readers see the old or the new file,
    never a torn one. The file gets the mode an ordinary ``open`` would (0o666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_yaml(path: Path, data: Any) -> None:
    _atomic_write(path, lambda f: f.write(yaml.safe_dump(data, sort_keys=False).encode()))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    _atomic_write(path, lambda f: torch.save(dict(state), f))


CHECKPOINT_KEYS = ("config", "task_index", "step_in_task", "wall_time", "records")


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, None if there is none; :class:`CheckpointUnreadable` if it does not load."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle garbage, unknown classes: all unreadable
        raise CheckpointUnreadable(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise CheckpointUnreadable(path, "not a plastibench checkpoint")
    return state


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether ``git status --porcelain`` shows local changes; None outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, data: Mapping[str, Any]) -> dict[str, Any]:
    env = {
        "plastibench": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "command": " ".join(sys.argv),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "data": dict(data),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = str(torch.version.cuda)
    return env


def write_metrics(path: Path, seeds: Sequence[int], records: Sequence[Mapping[str, np.ndarray]]) -> None:
    """``records[t][name]`` is the per-seed array of metric ``name`` for task ``t``."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["seed", "task_index", "metric", "value"])
    for t, record in enumerate(records):
        for name, values in record.items():
            w.writerows([seed, t, name, repr(float(v))] for seed, v in zip(seeds, values))
    _atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def read_metrics(path: Path) -> dict[str, dict[int, list[float]]]:
    """``metrics.csv`` back as ``{metric: {seed: [value per task]}}``."""
    out: dict[str, dict[int, list[float]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                series = out.setdefault(row["metric"], {}).setdefault(int(row["seed"]), [])
                if int(row["task_index"]) != len(series):
                    raise ValueError("rows out of order")
                series.append(float(row["value"]))
        except (ValueError, TypeError, KeyError, csv.Error) as exc:
            what = f"no column {exc}" if isinstance(exc, KeyError) else "a missing value" if isinstance(
                exc, TypeError) else " ".join(str(exc).split())[:80]
            raise RunFileError(f"{path}: line {reader.line_num} is damaged ({what}); expected the columns "
                               "seed,task_index,metric,value with numbers; restore the file or re-run the run "
                               "with --restart") from None
    return out


def summarise(config: Mapping[str, Any], protocol: Protocol, records: Sequence[Mapping[str, np.ndarray]],
              final_diagnostics: Mapping[str, np.ndarray], wall_time_s: float,
              at_task: int | None = None) -> dict[str, Any]:
    """Per-seed score = mean of the per-task metric over the protocol's final window.

    With ``at_task`` = N, the score the same rule gives the first N tasks: the mean over the last
    ``protocol.summary_tasks_at(N)`` of them (``records`` must hold at least N tasks)."""
    seeds = config["seeds"]
    n = protocol.n_tasks if at_task is None else at_task
    window = protocol.summary_tasks_at(n)
    records = records[:n]
    values = scored(np.stack([r[protocol.metric] for r in records]), protocol.diverged_score,
                    protocol.higher_is_better)
    per_seed = values[-window:].mean(0)
    diverged = diverged_seeds(seeds, records)
    mean, low, high = mean_ci95(per_seed)
    first = "" if at_task is None else f"the first {n} of "
    return {
        "method": config["method"],
        "task": protocol.task,
        "protocol": protocol.name,
        "protocol_hash": protocol.hash,
        "metric": protocol.metric,
        "higher_is_better": protocol.higher_is_better,
        "aggregate": f"mean of the per-task {protocol.metric} over the last {window} "
                     f"of {first}{protocol.n_tasks} tasks",
        **({} if at_task is None else {"at_task": n}),
        "n_seeds": len(seeds),
        "per_seed": {int(s): float(v) for s, v in zip(seeds, per_seed)},
        "n_diverged": len(diverged),
        "diverged": {"seeds_at_step": diverged, "scored_as": protocol.diverged_score},
        "mean": mean,
        "ci95": None if low is None else [low, high],
        "hparams": dict(config["hparams"]),
        "final_diagnostics": {k: {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                                  "per_seed": {int(s): float(x) for s, x in zip(seeds, v)}}
                              for k, v in final_diagnostics.items()},
        "wall_time_s": round(wall_time_s, 2),
    }


# ----- reading a finished run: everything recomputed from metrics.csv -----

END_OF_RUN = ("final_diagnostics", "wall_time_s")
END_OF_RUN_NOTE = ("final_diagnostics and wall_time_s are measured at the end of the run and are not "
                   "recomputable from metrics.csv; they are read from final.yaml")


class ResultError(ValueError):
    """A run directory whose results cannot be read back (missing or incomplete metrics.csv, ...)."""


def protocol_from_spec(spec: Mapping[str, Any]) -> Protocol:
    """A :class:`Protocol` from its ``to_dict()`` (``protocol_spec`` in config.yaml)."""
    spec = dict(spec)
    opt = dict(spec.pop("optimizer"))
    opt["betas"] = tuple(opt.get("betas", (0.9, 0.999)))
    return Protocol(**spec, optimizer=OptimizerSpec(**opt))


def protocol_from_config(config: Mapping[str, Any]) -> Protocol:
    """The protocol a run used, rebuilt from its ``config.yaml`` (checked against its hash)."""
    protocol = protocol_from_spec(config["protocol_spec"])
    if protocol.hash != config.get("protocol_hash"):
        raise ResultError(f"config.yaml: protocol_hash {config.get('protocol_hash')} is not the hash "
                          f"{protocol.hash} of its protocol_spec")
    return protocol


def _read_yaml_or_none(path: Path) -> Any:
    try:
        return read_yaml(path)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def end_of_run(run_dir: Path) -> dict[str, Any]:
    """``final_diagnostics`` and ``wall_time_s`` of a finished run: from ``final.yaml``; for runs
    older than it, from ``summary.yaml`` when it holds them well-formed; else empty and None."""
    for name in ("final.yaml", "summary.yaml"):
        data = _read_yaml_or_none(Path(run_dir) / name)
        if (isinstance(data, dict) and isinstance(data.get("final_diagnostics"), dict)
                and isinstance(data.get("wall_time_s"), (int, float)) and not isinstance(data["wall_time_s"], bool)):
            return {"final_diagnostics": data["final_diagnostics"], "wall_time_s": data["wall_time_s"],
                    "source": name}
    return {"final_diagnostics": {}, "wall_time_s": None, "source": None}


def write_end_of_run(run_dir: Path, summary: Mapping[str, Any]) -> None:
    write_yaml(Path(run_dir) / "final.yaml", {"note": "end-of-run measurements; not recomputable from "
                                                      "metrics.csv", **{k: summary[k] for k in END_OF_RUN}})


def _run_records(run_dir: Path, n_tasks: int | None = None) -> tuple[dict, Protocol, list[dict[str, np.ndarray]]]:
    """(config, protocol, per-task records of the metric and divergence rows) of the first
    ``n_tasks`` tasks (default: all the protocol's) of a run, read from ``config.yaml`` and
    ``metrics.csv``; :class:`ResultError` when the metrics do not hold them for every seed."""
    config = _read_yaml_or_none(run_dir / "config.yaml")
    if not isinstance(config, dict):
        raise ResultError(f"{run_dir}: no readable config.yaml")
    try:
        protocol = protocol_from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ResultError):
            raise ResultError(f"{run_dir}/{exc}") from None
        raise ResultError(f"{run_dir}/config.yaml: no usable protocol_spec ({exc})") from None
    n = protocol.n_tasks if n_tasks is None else n_tasks
    seeds, method = config.get("seeds"), config.get("method")
    if not isinstance(method, str) or not method:
        raise ResultError(f"{run_dir}/config.yaml: damaged (method {method!r} is not a method's name)")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ResultError(f"{run_dir}/config.yaml: damaged (seeds {seeds!r} is not a list of seeds)")
    try:
        metrics = read_metrics(run_dir / "metrics.csv")
    except (OSError, KeyError, ValueError, AssertionError) as exc:
        raise ResultError(f"{run_dir}/metrics.csv: unreadable ({exc})") from None
    if not 1 <= n <= protocol.n_tasks:
        raise ResultError(f"{run_dir}: its protocol {protocol.task}/{protocol.name} has {protocol.n_tasks} "
                          f"tasks; ask for a task from 1 to {protocol.n_tasks}, not {n}")
    series = metrics.get(protocol.metric, {})
    if n_tasks is None:  # a finished run holds exactly every task
        short = [s for s in seeds if len(series.get(s, ())) != n]
    else:
        short = [s for s in seeds if len(series.get(s, ())) < n]
    if short or not seeds:
        what = f"all {n} tasks" if n_tasks is None else f"the first {n} tasks"
        raise ResultError(f"{run_dir}/metrics.csv does not hold {protocol.metric} for {what} of seeds "
                          f"{short or seeds}: the run is unfinished or damaged")
    rows = [protocol.metric, *(name for name in ("diverged_at_step",) if name in metrics)]  # divergence
    if any(len(metrics[name].get(s, ())) < n for name in rows[1:] for s in seeds):
        raise ResultError(f"{run_dir}/metrics.csv does not hold diverged_at_step for {n} tasks of every seed: "
                          "the run is damaged")
    records = [{name: np.array([metrics[name][s][t] for s in seeds]) for name in rows} for t in range(n)]
    return config, protocol, records


def summary_at_task(run_dir: Path, at_task: int) -> dict[str, Any]:
    """The score a run's protocol gives its first ``at_task`` tasks (:func:`summarise` with
    ``at_task``), from ``metrics.csv``; the run may be unfinished. No diagnostics: those are
    measured at the end of a run only."""
    config, protocol, records = _run_records(Path(run_dir), at_task)
    try:
        summary = summarise(config, protocol, records, {}, 0.0, at_task=at_task)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"{run_dir}/config.yaml: damaged ({type(exc).__name__}: {exc})") from None
    summary.pop("wall_time_s")
    return {**summary, "recomputed_from": "metrics.csv"}


def summary_over_last(run_dir: Path, fraction: float) -> dict[str, Any]:
    """A finished run's summary with the per-seed score taken over its last ``fraction`` of tasks
    instead of the protocol's window (a tuning rule's own window), from ``metrics.csv``."""
    config, protocol, records = _run_records(Path(run_dir))
    return summarise(config, replace(protocol, summary_fraction=fraction), records, {}, 0.0)


def load_summary(run_dir: Path, *, locked: bool = False, rewrite: bool = True) -> dict[str, Any]:
    """The summary of a finished run, recomputed from ``metrics.csv`` and ``config.yaml``.

    ``summary.yaml`` is never trusted: what it says is replaced by what the metrics give (a
    malformed, empty or edited file is rewritten, when ``rewrite`` and the run's lock is free or
    ``locked`` says the caller holds it). Raises :class:`ResultError` when the metrics do not hold
    every task of every seed.
    """
    run_dir = Path(run_dir)
    config, protocol, records = _run_records(run_dir)
    end = end_of_run(run_dir)
    try:
        summary = summarise(config, protocol, records, {}, 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"{run_dir}/config.yaml: damaged ({type(exc).__name__}: {exc}); restore it or "
                          "re-run the run with --restart") from None
    summary["final_diagnostics"] = end["final_diagnostics"]
    summary["wall_time_s"] = end["wall_time_s"]
    summary["recomputed_from"] = "metrics.csv"
    summary["end_of_run"] = END_OF_RUN_NOTE if end["source"] == "final.yaml" else \
        (f"final_diagnostics and wall_time_s are not recomputable from metrics.csv; "
         f"{'kept from summary.yaml' if end['source'] else 'not recorded'} (no final.yaml)")
    if rewrite and _read_yaml_or_none(run_dir / "summary.yaml") != summary:
        fd = None if locked else _try_lock(run_dir)
        if locked or fd is not None:
            try:
                if (run_dir / "summary.yaml").exists():  # not cleared meanwhile (run --force)
                    write_yaml(run_dir / "summary.yaml", summary)
            finally:
                if fd is not None:
                    os.close(fd)
    return summary


def _try_lock(run_dir: Path) -> int | None:
    from .identity import try_lock
    return try_lock(run_dir)
