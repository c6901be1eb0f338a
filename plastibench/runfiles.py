"""Reading a run directory's YAML files with one-line errors: damaged or hand-edited files are
reported as :class:`~plastibench.errors.RunFileError` (the CLI exits 1) naming the file and field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from .errors import RunFileError

_NUMBER = (int, float)
_RESTORE = "restore it or re-run the run with --restart"

SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,), "task": (str,), "protocol": (str,), "protocol_hash": (str,), "metric": (str,),
    "higher_is_better": (bool,), "aggregate": (str,), "n_seeds": (int,), "per_seed": (dict,), "mean": _NUMBER,
    "ci95": (list, type(None)), "hparams": (dict,), "final_diagnostics": (dict,), "wall_time_s": _NUMBER,
}
SPEC_FIELDS: dict[str, tuple[type, ...]] = {
    "task": (str,), "name": (str,), "n_tasks": (int,), "steps_per_task": (int,), "batch_size": (int,),
    "metric": (str,), "higher_is_better": (bool,),
}
CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,), "hparams": (dict,), "task": (str,), "protocol": (str,), "protocol_hash": (str,),
    "protocol_spec": (dict,), "seeds": (list,),
}


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``, or a RunFileError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RunFileError(f"{path}: does not parse as YAML{where}; {_RESTORE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: cannot be read ({exc.__class__.__name__}); {_RESTORE}") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: not a YAML mapping; {_RESTORE}")
    return data


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _fields(path: Path, data: dict, fields: dict[str, tuple[type, ...]], prefix: str = "") -> None:
    for key, types in fields.items():
        if key not in data:
            raise RunFileError(f"{path}: missing field {prefix}{key}; {_RESTORE}")
        if not _is(data[key], types):
            raise RunFileError(f"{path}: field {prefix}{key} should be {' or '.join(t.__name__ for t in types)}, "
                               f"not {type(data[key]).__name__}; {_RESTORE}")


def _per_seed(path: Path, name: str, values: dict, seeds=None) -> None:
    if not values or not all(_is(s, (int,)) for s in values):
        raise RunFileError(f"{path}: {name} must map integer seeds to numbers; {_RESTORE}")
    if not all(_is(v, _NUMBER) and math.isfinite(v) for v in values.values()):
        raise RunFileError(f"{path}: {name} has a value that is not a finite number; {_RESTORE}")
    if seeds is not None and set(values) != set(seeds):
        raise RunFileError(f"{path}: {name} does not have the seeds of per_seed; {_RESTORE}")


def read_summary(path: Path) -> dict[str, Any]:
    """A ``summary.yaml`` with every field that ``summarise`` writes, well typed."""
    path = Path(path)
    data = read_mapping(path)
    _fields(path, data, SUMMARY_FIELDS)
    _per_seed(path, "per_seed", data["per_seed"])
    if data["ci95"] is not None and (len(data["ci95"]) != 2 or not all(_is(v, _NUMBER) for v in data["ci95"])):
        raise RunFileError(f"{path}: ci95 should be two numbers or null; {_RESTORE}")
    for name, diag in data["final_diagnostics"].items():
        if not isinstance(diag, dict) or not isinstance(diag.get("per_seed"), dict):
            raise RunFileError(f"{path}: final_diagnostics.{name} lacks its per_seed values; {_RESTORE}")
        _per_seed(path, f"final_diagnostics.{name}.per_seed", diag["per_seed"], data["per_seed"])
    return data


def read_config(path: Path) -> dict[str, Any]:
    """A ``config.yaml`` with the fields that plots and submissions read, well typed."""
    path = Path(path)
    data = read_mapping(path)
    _fields(path, data, CONFIG_FIELDS)
    _fields(path, data["protocol_spec"], SPEC_FIELDS, "protocol_spec.")
    seeds = data["seeds"]
    if not seeds or not all(_is(s, (int,)) for s in seeds) or len(set(seeds)) != len(seeds):
        raise RunFileError(f"{path}: seeds must be a non-empty list of distinct integers; {_RESTORE}")
    return data


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(summary, config, environment) of a finished run directory, each checked."""
    run_dir = Path(run_dir)
    return (read_summary(run_dir / "summary.yaml"), read_config(run_dir / "config.yaml"),
            read_mapping(run_dir / "environment.yaml"))
