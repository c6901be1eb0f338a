"""The run directory: raw per-seed streams first, every aggregate recomputed from them.

``<out>/<task>/<protocol>/<method>-<config hash>/`` holds

* ``config.yaml``      the resolved configuration (method, hyperparameters, protocol, seeds);
* ``environment.yaml`` versions, device, git commit, data checksums;
* ``metrics.csv``      per-seed streams in long form: ``seed,task_index,metric,value``;
* ``checkpoint.pt``    the latest checkpoint (engine, net, optimizer, method and task state);
* ``summary.yaml``     written last: per-seed primary metric, mean and Student-t 95% CI.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml

from . import __version__
from .errors import CheckpointUnreadable, RunFileError
from .protocol import Protocol
from .divergence import diverged_seeds, scored
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


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def environment(device: torch.device, data: Mapping[str, Any]) -> dict[str, Any]:
    env = {
        "plastibench": __version__,
        "git_commit": git_commit(),
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
              final_diagnostics: Mapping[str, np.ndarray], wall_time_s: float) -> dict[str, Any]:
    """Per-seed score = mean of the per-task metric over the protocol's final window."""
    seeds = config["seeds"]
    values = scored(np.stack([r[protocol.metric] for r in records]), protocol.diverged_score,
                    protocol.higher_is_better)
    per_seed = values[-protocol.summary_tasks:].mean(0)
    diverged = diverged_seeds(seeds, records)
    mean, low, high = mean_ci95(per_seed)
    return {
        "method": config["method"],
        "task": protocol.task,
        "protocol": protocol.name,
        "protocol_hash": protocol.hash,
        "metric": protocol.metric,
        "higher_is_better": protocol.higher_is_better,
        "aggregate": f"mean of the per-task {protocol.metric} over the last {protocol.summary_tasks} "
                     f"of {protocol.n_tasks} tasks",
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
