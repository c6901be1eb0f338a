"""The leaderboard: one YAML entry per (task, protocol, method), raw per-seed values first.

``<root>/entries/<task>/<protocol>/<method>.yaml`` holds a finished run's provenance (method,
paper, code commit, hyperparameters and how they were tuned, protocol hash, data checksums,
environment) and its raw per-seed values. The raw values are the authority: the entry's
``summary`` is checked against them, and ``<root>/README.md`` is rendered from them alone.

Integrity: ``submit`` recomputes every number from the run's ``metrics.csv`` and ``config.yaml``
(a ``summary.yaml`` that disagrees is refused); ``content_hash`` covers the method, its
hyperparameters, the protocol, the data checksums, the raw values and the replay values, and
``check`` recomputes it (``--against REF``: merged entries are immutable); ``replay`` keeps the
per-seed metric of the first tasks, which ``verify`` re-runs on this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import compare
from .registry import METHODS, TASKS, UnknownName
from .results import read_metrics, read_yaml, write_yaml
from .stats import mean_ci95

SCHEMA_VERSION = 2
REPLAY_TASKS = 3  # per-seed metric of the first tasks kept in each entry, for `leaderboard verify`
REPLAY_RTOL, REPLAY_ATOL = 1e-4, 1e-7
UNVERIFIED = "†"
HASHED = ("method", "hyperparameters", "protocol", "data", "seeds", "results.per_seed",
          "results.final_diagnostics", "replay", "tuning")  # "tuning" only in entries chosen by sweep --select
DEFAULT_TUNING = "plastibench's default settings of the method (see its docstring), not tuned here"
BASELINE = "cbp"
TUNING_NOTE = ("tuning budget: how many configurations `plastibench sweep --select` tried on its tune seeds "
               "before the reported run, which used other seeds (the rule is the entry's "
               "`method.selection_rule`); — : no recorded selection (the entry's `method.tuning` says how its "
               "settings were chosen).")
START = "<!-- plastibench:leaderboard:start -->"
END = "<!-- plastibench:leaderboard:end -->"
INTRO = """# plastibench leaderboard

Methods for keeping plasticity in continual learning, measured against continual backprop (CBP)
on frozen, hashed protocols. Each entry in `entries/<task>/<protocol>/<method>.yaml` holds the raw
per-seed values of one run; every number below is recomputed from them. Add an entry with
`plastibench leaderboard submit RUN_DIR`, then `plastibench leaderboard render` and
`plastibench leaderboard check`; `plastibench leaderboard verify` re-runs the first tasks of an
entry's seeds and compares them with the values stored in it.

"""
ENV_KEYS = ("plastibench", "python", "torch", "numpy", "device", "gpu", "cuda", "platform", "processor",
            "cpu_count")
_NUMBER = (int, float)
_NONE = type(None)
FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "method": (dict,), "method.name": (str,), "method.paper": (str,),
    "method.code_commit": (str, _NONE), "method.hyperparameters": (dict,), "method.tuning": (str,),
    "protocol": (dict,), "protocol.task": (str,), "protocol.name": (str,), "protocol.hash": (str,),
    "protocol.metric": (str,), "protocol.higher_is_better": (bool,), "protocol.aggregate": (str,),
    "data": (dict,), "environment": (dict,), "environment.python": (str,), "environment.torch": (str,),
    "environment.device": (str,), "environment.platform": (str,), "environment.processor": (str,),
    "environment.cpu_count": (int, _NONE), "wall_time_s": _NUMBER, "seeds": (list,), "results": (dict,),
    "results.per_seed": (dict,), "results.final_diagnostics": (dict,), "summary": (dict,),
    "summary.n_seeds": (int,), "summary.mean": _NUMBER, "summary.ci95": (list, _NONE), "verified": (bool,),
    "replay": (dict,), "replay.tasks": (int,), "replay.metric": (str,), "replay.per_seed_task_metrics": (dict,),
    "content_hash": (dict,), "content_hash.sha256": (str,), "content_hash.parts": (dict,),
}

# Fields an entry may lack (those of a run chosen by ``sweep --select``); typed when present.
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {"method.tuning_budget": (int,), "method.selection_rule": (str,)}


class LeaderboardError(ValueError):
    """A refused submission or an unusable leaderboard root: the CLI prints it and exits 2."""


class IntegrityError(LeaderboardError):
    """A run whose numbers disagree with its raw files, or made on unverified data: the CLI exits 1."""


@dataclass(frozen=True)
class Entry:
    """One entry file and its parsed content."""

    path: Path
    data: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.data["protocol"]["task"], self.data["protocol"]["name"]

    def result(self) -> compare.Result:
        results = self.data["results"]
        return compare.Result(self.data["method"]["name"], results["per_seed"], results["final_diagnostics"],
                              len(results.get("diverged") or {}))


def entry_path(root: Path, task: str, protocol: str, method: str) -> Path:
    return Path(root) / "entries" / task / protocol / f"{method}.yaml"


def _registry_protocol(task: str, protocol: str):
    return TASKS.get(task).protocol(protocol)


# ----- submit -----

def data_verified(data: Any) -> bool:
    """False when any data record (at any depth) says ``verified: false``; synthetic tasks have none."""
    if isinstance(data, dict):
        return data.get("verified", True) is not False and all(data_verified(v) for v in data.values())
    if isinstance(data, list):
        return all(data_verified(v) for v in data)
    return True


def _first_difference(name: str, have: Any, want: Any) -> str | None:
    """Where ``have`` (summary.yaml) departs from ``want`` (recomputed), or None."""
    if isinstance(want, dict) and isinstance(have, dict):
        if set(have) != set(want):
            return f"{name} has keys {sorted(have, key=str)}, the raw files give {sorted(want, key=str)}"
        for k in want:
            found = _first_difference(f"{name}[{k}]", have[k], want[k])
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(have, list) and len(have) == len(want):
        return next(filter(None, (_first_difference(f"{name}[{i}]", h, w)
                                  for i, (h, w) in enumerate(zip(have, want)))), None)
    if isinstance(want, float) and _is(have, _NUMBER):
        return None if _close(have, want) else f"{name} is {have!r}, the raw files give {want!r}"
    return None if have == want else f"{name} is {have!r}, the raw files give {want!r}"


def recomputed(run_dir: Path) -> dict[str, Any]:
    """Every number of a finished run recomputed from its ``config.yaml`` and ``metrics.csv``.

    Refuses (:class:`IntegrityError`) a run whose ``summary.yaml`` disagrees with them: per-seed
    scores, mean, CI, seeds, method, hyperparameters or protocol. Returns the summary's fields with
    the recomputed values, and ``series``: the protocol metric per seed and task.
    """
    summary, config = read_yaml(run_dir / "summary.yaml"), read_yaml(run_dir / "config.yaml")
    if not (run_dir / "metrics.csv").exists():
        raise IntegrityError(f"{run_dir}: no metrics.csv; the leaderboard recomputes every number from it")
    try:
        proto = _registry_protocol(config["task"], config["protocol"])
    except UnknownName as exc:
        raise LeaderboardError(f"{run_dir}: {exc.args[0]}") from None
    seeds = list(config["seeds"])
    series = read_metrics(run_dir / "metrics.csv").get(proto.metric, {})
    for seed in seeds:
        if len(series.get(seed, ())) != proto.n_tasks:
            raise IntegrityError(f"{run_dir}: metrics.csv has {len(series.get(seed, ()))} of {proto.n_tasks} "
                                 f"values of {proto.metric} for seed {seed}")
    if set(series) != set(seeds):
        raise IntegrityError(f"{run_dir}: metrics.csv has seeds {sorted(series)}, config.yaml {seeds}")
    # as results.summarise computes it: the window stacked task by task, averaged over tasks
    window = np.array([[series[s][t] for s in seeds] for t in range(proto.n_tasks)])[-proto.summary_tasks:]
    per_seed = {int(s): float(v) for s, v in zip(seeds, window.mean(0))}
    mean, low, high = mean_ci95(list(per_seed.values()))
    want = {"method": config["method"], "task": config["task"], "protocol": config["protocol"],
            "protocol_hash": config["protocol_hash"], "hparams": config["hparams"], "n_seeds": len(seeds),
            "per_seed": per_seed, "mean": mean, "ci95": None if low is None else [low, high]}
    diagnostics = summary.get("final_diagnostics", {})
    for name in ("method", "task", "protocol", "protocol_hash", "hparams", "n_seeds", "per_seed", "mean", "ci95"):
        found = (f"summary.yaml has no {name}" if name not in summary
                 else _first_difference(name, summary[name], want[name]))
        if found is None and name == "per_seed":
            bad = [k for k, v in diagnostics.items() if set(v.get("per_seed", {})) != set(seeds)]
            found = f"final_diagnostics.{bad[0]} does not cover the seeds {seeds}" if bad else None
        if found:
            raise IntegrityError(f"{run_dir}: summary.yaml disagrees with metrics.csv/config.yaml: {found}")
    return {**summary, **want, "seeds": seeds, "series": {s: series[s] for s in seeds}}


def entry_from_run(run_dir: Path, tuning: str = DEFAULT_TUNING, allow_unverified: bool = False,
                   replay_tasks: int = REPLAY_TASKS) -> dict[str, Any]:
    """The entry of a finished run directory, every number recomputed from its raw files.

    Refuses unfinished runs, foreign protocol hashes, summaries that disagree with the raw files
    and, without ``allow_unverified``, runs on data whose checksums were not verified.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LeaderboardError(f"{run_dir}: not a run directory")
    if not (run_dir / "summary.yaml").exists():
        raise LeaderboardError(f"{run_dir}: no summary.yaml; the run is unfinished (re-run its command to finish it)")
    summary = read_yaml(run_dir / "summary.yaml")
    env = read_yaml(run_dir / "environment.yaml")
    method, task, name = summary["method"], summary["task"], summary["protocol"]
    try:
        proto = _registry_protocol(task, name)
        in_tree = METHODS.in_tree(method)
    except UnknownName as exc:
        raise LeaderboardError(f"{run_dir}: {exc.args[0]}") from None
    options = (read_yaml(run_dir / "config.yaml") or {}).get("task_options")
    if options:
        chosen = ", ".join(f"task.{k}={v}" for k, v in options.items())
        raise LeaderboardError(f"{run_dir}: the run chose task options ({chosen}); the leaderboard ranks only "
                               "the registered protocols, so re-run without them")
    if summary["protocol_hash"] != proto.hash:
        raise LeaderboardError(f"{run_dir}: protocol hash {summary['protocol_hash']} is not the registry's "
                               f"{proto.hash} for {task}/{name}; re-run with the current protocol")
    if not in_tree:
        raise LeaderboardError(f"{run_dir}: method {method!r} is an out-of-tree plugin; the leaderboard ranks "
                               "only methods in methods/")
    if "TODO" in METHODS.get(method).paper:
        raise LeaderboardError(f"{run_dir}: method {method!r} still has a TODO in its `paper`; cite its paper "
                               "in methods/" + method + ".py first")
    run = recomputed(run_dir)
    data = env.get("data", {})
    verified = data_verified(data)
    if not verified and not allow_unverified:
        raise IntegrityError(f"{run_dir}: the run used unverified data (environment.yaml data record says "
                             "verified: false); pass --allow-unverified to submit it marked and unranked")
    n_replay = min(replay_tasks, proto.n_tasks)
    entry = {
        "schema_version": SCHEMA_VERSION,
        "method": {"name": method, "paper": METHODS.get(method).paper, "code_commit": env.get("git_commit"),
                   "hyperparameters": run["hparams"], **_tuning(run_dir, tuning)},
        "protocol": {"task": task, "name": name, "hash": proto.hash, "metric": proto.metric,
                     "higher_is_better": proto.higher_is_better, "aggregate": summary["aggregate"]},
        "data": data,
        "environment": {k: env[k] for k in ENV_KEYS if k in env},
        "wall_time_s": summary["wall_time_s"],
        "seeds": run["seeds"],
        "results": {"per_seed": run["per_seed"],
                    "final_diagnostics": {k: v["per_seed"] for k, v in summary["final_diagnostics"].items()}},
        "summary": _summary(run["per_seed"]),
        "verified": verified,
        "replay": {"tasks": n_replay, "metric": proto.metric,
                   "per_seed_task_metrics": {s: v[:n_replay] for s, v in run["series"].items()}},
    }
    diverged = (summary.get("diverged") or {}).get("seeds_at_step") or {}
    if diverged:  # seeds that went non-finite, with their step (scored by the protocol's rule)
        entry["results"]["diverged"] = {int(s): int(step) for s, step in diverged.items()}
    return with_content_hash(entry)


def _tuning(run_dir: Path, tuning: str) -> dict[str, Any]:
    """``tuning`` (prose), and for a run chosen by ``sweep --select`` (its ``selection.yaml``) the
    tuning budget (configurations tried) and the selection rule."""
    selection = read_yaml(run_dir / "selection.yaml") if (run_dir / "selection.yaml").exists() else None
    if not isinstance(selection, dict):
        return {"tuning": tuning}
    budget, rule = selection.get("tuning_budget"), selection.get("rule")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1 or not isinstance(rule, str):
        raise LeaderboardError(f"{run_dir}/selection.yaml: needs tuning_budget (a count >= 1) and rule (text)")
    if tuning == DEFAULT_TUNING:
        tuning = (f"chosen by `plastibench sweep --select` (spec {selection.get('spec')}) among {budget} "
                  f"configurations on tune seeds {selection.get('tune_seeds')}; reported on seeds "
                  f"{selection.get('report_seeds')}, which the choice never saw")
    return {"tuning": tuning, "tuning_budget": budget, "selection_rule": rule}


def _summary(per_seed: dict[int, float]) -> dict[str, Any]:
    mean, low, high = mean_ci95(list(per_seed.values()))
    return {"n_seeds": len(per_seed), "mean": mean, "ci95": None if low is None else [low, high]}


def submit(run_dir: Path, root: Path, tuning: str = DEFAULT_TUNING, force: bool = False,
           allow_unverified: bool = False) -> Path:
    """Write the entry of ``run_dir`` under ``root``; an existing entry is replaced only with ``force``."""
    entry = entry_from_run(run_dir, tuning, allow_unverified)
    path = entry_path(root, entry["protocol"]["task"], entry["protocol"]["name"], entry["method"]["name"])
    if path.exists() and not force:
        raise LeaderboardError(f"{path} exists; pass --force to replace it")
    write_yaml(path, entry)
    return path


# ----- content hash -----

def _canonical(value: Any) -> Any:
    """JSON-ready with string keys (YAML gives int seed keys); floats stay exact (repr round-trips)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _digest(value: Any) -> str:
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def hashed_content(data: dict[str, Any]) -> dict[str, Any]:
    """What the content hash covers, by part (``HASHED``); a part absent from ``data`` is None, but
    "tuning" is there only when the entry records a tuning budget."""
    def get(dotted):
        try:
            return _get(data, dotted)
        except KeyError:
            return None
    protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
    content = {"method": get("method.name"), "hyperparameters": get("method.hyperparameters"),
               "protocol": {k: protocol.get(k) for k in ("task", "name", "hash")}, "data": get("data"),
               "seeds": get("seeds"), "results.per_seed": get("results.per_seed"),
               "results.final_diagnostics": get("results.final_diagnostics"), "replay": get("replay")}
    if get("method.tuning_budget") is not None:  # only then, so that older entries keep their hashes
        content["tuning"] = {"budget": get("method.tuning_budget"), "rule": get("method.selection_rule")}
    return content


def content_hash(data: dict[str, Any]) -> dict[str, Any]:
    """``{sha256: <over every part>, parts: {part: <first 16 hex digits of its own sha256>}}``."""
    content = hashed_content(data)
    return {"sha256": _digest(content), "parts": {k: _digest(v)[:16] for k, v in content.items()}}


def with_content_hash(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``content_hash`` (the last field)."""
    out = {k: v for k, v in data.items() if k != "content_hash"}
    out["content_hash"] = content_hash(out)
    return out


def hash_problems(data: dict[str, Any]) -> list[str]:
    """One line when the stored content hash is not the content's, naming the parts that differ."""
    stored, want = data["content_hash"], content_hash(data)
    if stored == want:
        return []
    parts = stored.get("parts") if isinstance(stored.get("parts"), dict) else {}
    changed = [k for k in HASHED if parts.get(k) != want["parts"].get(k)]
    what = (f"{', '.join(changed)} differ from the content hashed at submission" if changed
            else "content_hash.sha256 was edited")
    return [f"content hash mismatch: {what} (stored {str(stored.get('sha256'))[:16]}, content gives "
            f"{want['sha256'][:16]}); entries are not edited by hand: submit a new run"]


def verified_problems(data: dict[str, Any]) -> list[str]:
    want = data_verified(data["data"])
    if data["verified"] != want:
        return [f"verified is {data['verified']} but the data record says {'verified' if want else 'unverified'} "
                "data; `verified` states the data record and is not set by hand"]
    return []


# ----- check -----

def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _per_seed_problems(name: str, values: Any, seeds: list) -> list[str]:
    if not isinstance(values, dict) or set(values) != set(seeds):
        return [f"{name} must map exactly the seeds {seeds} to numbers"]
    if not all(_is(v, _NUMBER) and math.isfinite(v) for v in values.values()):
        return [f"{name} has a value that is not a finite number"]
    return []


def schema_problems(data: Any) -> list[str]:
    """Missing or mistyped fields and malformed per-seed values."""
    if not isinstance(data, dict):
        return ["not a YAML mapping"]
    problems = []
    for dotted, types in FIELDS.items():
        try:
            value = _get(data, dotted)
        except KeyError:
            problems.append(f"missing field {dotted}")
            continue
        if not _is(value, types):
            problems.append(f"field {dotted} should be {' or '.join(t.__name__ for t in types)}, "
                            f"not {type(value).__name__}")
    for dotted, types in OPTIONAL_FIELDS.items():
        try:
            value = _get(data, dotted)
        except KeyError:
            continue
        if not _is(value, types):
            problems.append(f"field {dotted} should be {' or '.join(t.__name__ for t in types)}, "
                            f"not {type(value).__name__}")
    if problems:
        return problems
    if data["schema_version"] != SCHEMA_VERSION:
        return [f"schema_version {data['schema_version']} is not {SCHEMA_VERSION}"]
    seeds = data["seeds"]
    if not seeds or not all(_is(s, (int,)) for s in seeds) or len(set(seeds)) != len(seeds):
        return ["seeds must be a non-empty list of distinct integers"]
    problems = _per_seed_problems("results.per_seed", data["results"]["per_seed"], seeds)
    for name, values in data["results"]["final_diagnostics"].items():
        problems += _per_seed_problems(f"results.final_diagnostics.{name}", values, seeds)
    return problems + _replay_problems(data["replay"], seeds)


def _replay_problems(replay: dict[str, Any], seeds: list) -> list[str]:
    tasks, values = replay["tasks"], replay["per_seed_task_metrics"]
    if tasks < 1:
        return ["replay.tasks must be at least 1"]
    if set(values) != set(seeds):
        return [f"replay.per_seed_task_metrics must map exactly the seeds {seeds} to lists of {tasks} numbers"]
    for seed, series in values.items():
        if not isinstance(series, list) or len(series) != tasks or not all(
                _is(v, _NUMBER) and math.isfinite(v) for v in series):
            return [f"replay.per_seed_task_metrics[{seed}] must be a list of {tasks} finite numbers"]
    return []


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def summary_problems(data: dict[str, Any]) -> list[str]:
    """Differences between the entry's ``summary`` and the one its raw values give."""
    want, have = _summary(data["results"]["per_seed"]), data["summary"]
    problems = []
    if have["n_seeds"] != want["n_seeds"]:
        problems.append(f"summary.n_seeds {have['n_seeds']} is not the {want['n_seeds']} raw values")
    if not _close(have["mean"], want["mean"]):
        problems.append(f"summary.mean {have['mean']!r} differs from the mean of the raw values {want['mean']!r}")
    ci_ok = (have["ci95"] is None) == (want["ci95"] is None) and (
        want["ci95"] is None or (len(have["ci95"]) == 2 and all(_is(v, _NUMBER) and _close(v, w)
                                                                for v, w in zip(have["ci95"], want["ci95"]))))
    if not ci_ok:
        problems.append(f"summary.ci95 {have['ci95']!r} differs from the Student-t 95% CI of the raw values "
                        f"{want['ci95']!r}")
    return problems


def registry_problems(root: Path, entry: Entry) -> list[str]:
    """Protocol hash, metric and direction against the registry; method in-tree; file path."""
    data, (task, name), method = entry.data, entry.key, entry.data["method"]["name"]
    problems = []
    try:
        proto = _registry_protocol(task, name)
        if data["protocol"]["hash"] != proto.hash:
            problems.append(f"protocol hash {data['protocol']['hash']} is not the registry's {proto.hash} "
                            f"for {task}/{name}")
        for field, value in (("metric", proto.metric), ("higher_is_better", proto.higher_is_better)):
            if data["protocol"][field] != value:
                problems.append(f"protocol.{field} {data['protocol'][field]!r} is not the protocol's {value!r}")
        if data["replay"]["metric"] != proto.metric or data["replay"]["tasks"] > proto.n_tasks:
            problems.append(f"replay must hold the protocol's {proto.metric} of at most {proto.n_tasks} tasks")
    except UnknownName as exc:
        problems.append(str(exc.args[0]))
    try:
        if not METHODS.in_tree(method):
            problems.append(f"method {method!r} is an out-of-tree plugin; only methods in methods/ are ranked")
    except UnknownName:
        problems.append(f"method {method!r} is not registered in-tree (no file in methods/ registers it)")
    expected = entry_path(root, task, name, method)
    if entry.path != expected:
        problems.append(f"path does not match its task/protocol/method: expected {expected}")
    return problems


def load_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """Entries whose every field is present and well typed, and one ``path: problem`` line per other file."""
    entries, problems = [], []
    folder = Path(root) / "entries"
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix != ".yaml":
            problems.append(f"{path}: not an entry (entries are <method>.yaml)")
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            problems.append(f"{path}: does not parse as YAML ({' '.join(str(exc).split())})")
            continue
        found = schema_problems(data)
        problems += [f"{path}: {p}" for p in found]
        if not found:
            entries.append(Entry(path, data))
    return entries, problems


def valid_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """Entries that pass every per-entry check, and ``path: problem`` lines for the others."""
    loaded, problems = load_entries(root)
    valid = []
    for entry in loaded:
        found = (hash_problems(entry.data) + verified_problems(entry.data) + summary_problems(entry.data)
                 + registry_problems(root, entry))
        problems += [f"{entry.path}: {p}" for p in found]
        if not found:
            valid.append(entry)
    return valid, problems


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _describe_change(part: str, old: Any, new: Any) -> str:
    """``part`` and, for hyperparameters and seeds, what changed in it."""
    if part == "seeds" and isinstance(old, list) and isinstance(new, list):
        added, removed = [s for s in new if s not in old], [s for s in old if s not in new]
        bits = ([f"added {added}"] if added else []) + ([f"removed {removed}"] if removed else [])
        return f"seeds {' and '.join(bits) or 'reordered'}"
    if part == "hyperparameters" and isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if old.get(k, "<unset>") != new.get(k, "<unset>")]
        return "hyperparameters " + ", ".join(f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
                                              for k in keys)
    return part


def changes_since(root: Path, ref: str) -> list[str]:
    """Entries of ``ref`` that were removed or whose hashed content changed (merged entries are immutable).

    Compared part by part (:data:`HASHED`); a part the entry at ``ref`` lacks (an entry older than
    the replay values) may be added, nothing else may change.
    """
    root = Path(root)
    if _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise LeaderboardError(f"--against {ref}: not a commit of the git repository holding {root}")
    listed = _git(root, "ls-tree", "-r", "-z", "--name-only", ref, "--", "entries").stdout.split("\0")
    problems = []
    for rel in sorted(p for p in listed if p.endswith(".yaml")):
        path = root / rel
        if not path.exists():
            problems.append(f"{path}: entry removed since {ref}; merged entries are immutable")
            continue
        try:
            old = hashed_content(yaml.safe_load(_git(root, "show", f"{ref}:./{rel}").stdout))
        except (yaml.YAMLError, AttributeError):
            continue  # nothing readable to protect
        try:
            new = hashed_content(yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, AttributeError):
            continue  # already reported by the schema check
        changed = [_describe_change(k, old[k], new.get(k)) for k in HASHED
                   if old.get(k) is not None and _digest(old[k]) != _digest(new.get(k))]
        if changed:
            problems.append(f"{path}: changed since {ref} ({'; '.join(changed)}); merged entries are immutable, "
                            "submit a new run under a new protocol instead")
    return problems


def check(root: Path, against: str | None = None) -> tuple[int, list[str]]:
    """(number of entry files, one ``path: problem`` line per problem) for the leaderboard at ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise LeaderboardError(f"{root}: no leaderboard here (expected {root}/entries/ and {root}/README.md)")
    entries, problems = valid_entries(root)
    n = len(list((root / "entries").rglob("*.yaml")))
    readme = root / "README.md"
    current = readme.read_text() if readme.exists() else None
    try:
        if current is None or current != readme_text(current, render_block(entries)):
            problems.append(f"{readme}: stale; run `plastibench leaderboard render --root {root}` and commit it")
    except LeaderboardError as exc:
        problems.append(f"{readme}: {exc}")
    if against is not None:
        problems += changes_since(root, against)
    return n, problems


# ----- render -----

def _table_rows(entries: list[Entry], higher_is_better: bool) -> list[tuple[compare.Row, bool]]:
    """(row, verified) best first: the verified entries ranked among themselves, then the unverified
    ones (each compared with the verified ones and the baseline, never ranked) by mean."""
    verified = [e.result() for e in entries if e.data["verified"]]
    baseline = BASELINE if any(r.label == BASELINE for r in verified) else None
    rows = [(row, True) for row in compare.statistics_table(verified, baseline, higher_is_better)]
    extra = []
    for entry in entries:
        if not entry.data["verified"]:
            table = compare.statistics_table(verified + [entry.result()], baseline, higher_is_better)
            row = next(r for r in table if r.result.label == entry.data["method"]["name"])
            extra.append(dataclasses.replace(row, rank=None))
    sign = -1.0 if higher_is_better else 1.0
    return rows + [(row, False) for row in sorted(extra, key=lambda r: (sign * r.mean, r.result.label))]


def _markdown_table(entries: list[Entry]) -> list[str]:
    task, name = entries[0].key
    proto = _registry_protocol(task, name)
    rows = _table_rows(entries, proto.higher_is_better)
    baseline = BASELINE if any(ok and row.result.label == BASELINE for row, ok in rows) else None
    header = [*compare.header(BASELINE), "tuning budget"]
    lines = [f"### {compare.title(task, name, proto.hash, proto.metric, proto.higher_is_better)}", "",
             f"Per-seed score: mean of the per-task {proto.metric} over the last {proto.summary_tasks} of "
             f"{proto.n_tasks} tasks."
             + ("" if baseline else f" No verified {BASELINE} entry yet: the comparison columns are empty."), "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if col == "method" else "---:" for col in header) + "|"]
    budget = {e.data["method"]["name"]: e.data["method"].get("tuning_budget") for e in entries}
    for row, ok in rows:
        cells = compare.cells(row, BASELINE)
        if not ok:
            cells[0], cells[1] = "unverified", f"{cells[1]} {UNVERIFIED}"
        chosen_among = budget.get(row.result.label)
        cells.append(compare.DASH if chosen_among is None else str(chosen_among))
        lines.append("| " + " | ".join(cells) + " |")
    if not all(ok for _, ok in rows):
        lines += ["", f"{UNVERIFIED} Run on data whose checksums did not match the official files (submitted "
                  "with `--allow-unverified`): shown for reference, not ranked, and left out of the other rows' "
                  "statistics."]
    return lines + [""]


def render_block(entries: list[Entry]) -> str:
    """The Markdown between the markers: one table per task and protocol, then what the columns mean."""
    lines = ["", "_Rendered by `plastibench leaderboard render` from the raw per-seed values in `entries/`; "
             "do not edit by hand._", ""]
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: (e.key, e.data["method"]["name"])):
        groups.setdefault(entry.key, []).append(entry)
    for group in groups.values():
        lines += _markdown_table(group)
    if not groups:
        lines += ["No entries yet.", ""]
    lines += [f"- {note}" for note in [*compare.notes(BASELINE), TUNING_NOTE]] + [""]
    return "\n".join(lines) + "\n"


def readme_text(current: str | None, block: str) -> str:
    """``current`` with the text between the markers replaced by ``block`` (intro and markers if missing)."""
    if current is None:
        return f"{INTRO}{START}\n{block}{END}\n"
    starts, ends = current.count(START), current.count(END)
    if (starts, ends) == (0, 0):
        return f"{current.rstrip()}\n\n{START}\n{block}{END}\n"
    if (starts, ends) != (1, 1) or current.index(START) > current.index(END):
        raise LeaderboardError(f"needs exactly one {START} followed by one {END}")
    before, rest = current.split(START)
    return f"{before}{START}\n{block}{END}{rest.split(END)[1]}"


def render(root: Path) -> tuple[Path, int, list[str]]:
    """Write ``<root>/README.md`` from the valid entries; returns (path, entries shown, skipped-entry problems)."""
    root = Path(root)
    entries, problems = valid_entries(root)
    readme = root / "README.md"
    try:
        text = readme_text(readme.read_text() if readme.exists() else None, render_block(entries))
    except LeaderboardError as exc:
        raise LeaderboardError(f"{readme}: {exc}") from None
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(text)
    return readme, len(entries), problems


# ----- verify: re-run the first tasks of some seeds -----

def replay(entry: dict[str, Any], seeds: list[int], tasks: int, data_dir=None) -> dict[int, list[float]]:
    """The protocol metric of the first ``tasks`` tasks of ``seeds``, re-run here on the CPU with the
    entry's method, hyperparameters and protocol (``dataclasses.replace(protocol, n_tasks=tasks)``;
    a seed alone equals the same seed among others)."""
    import torch

    from .engine import Engine
    from .results import run_config

    method, task = entry["method"]["name"], entry["protocol"]["task"]
    task_cls = TASKS.get(task)
    proto = dataclasses.replace(task_cls.protocol(entry["protocol"]["name"]), n_tasks=tasks)
    # hyperparameters the method gained after the entry was made take their defaults (their
    # defaults keep the earlier behaviour); the entry's own values override everything
    hparams = {**METHODS.get(method).hparams_for(task), **entry["method"]["hyperparameters"]}
    with tempfile.TemporaryDirectory(prefix="plastibench-verify-") as tmp:
        engine = Engine(METHODS.get(method), hparams, task_cls, proto, seeds, device=torch.device("cpu"),
                        directory=Path(tmp), config=run_config(method, hparams, proto, seeds), data_dir=data_dir,
                        checkpoint_every=float("inf"))
        engine.run()
        return {s: [float(r[proto.metric][i]) for r in engine.records] for i, s in enumerate(seeds)}


def pick_seeds(seeds: list[int], k: int, rng: random.Random) -> list[int]:
    """``k`` of ``seeds`` drawn at random (all of them when ``k`` >= their number), sorted."""
    return sorted(seeds) if k >= len(seeds) else sorted(rng.sample(list(seeds), k))


def verify_entry(entry: Entry, n_seeds: int, tasks: int, rng: random.Random, data_dir=None,
                 rerun=replay) -> tuple[str, bool]:
    """(one line, passed) for re-running ``tasks`` tasks of ``n_seeds`` of the entry's seeds."""
    stored = entry.data["replay"]
    tasks = min(tasks, stored["tasks"])
    seeds = pick_seeds(entry.data["seeds"], n_seeds, rng)
    got = rerun(entry.data, seeds, tasks, data_dir)
    bad = [(s, t, stored["per_seed_task_metrics"][s][t], got[s][t]) for s in seeds for t in range(tasks)
           if not math.isclose(got[s][t], stored["per_seed_task_metrics"][s][t], rel_tol=REPLAY_RTOL,
                               abs_tol=REPLAY_ATOL)]
    what = f"seeds {seeds}, {tasks} task{'s' if tasks > 1 else ''}"
    if not bad:
        return f"{entry.path}: replay OK ({what})", True
    s, t, want, have = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (f"{entry.path}: replay differs from the stored values ({what}, rtol {REPLAY_RTOL:g}): seed {s} task {t} "
            f"stored {want!r}, re-run here {have!r}{more}"), False


def select_entries(root: Path, which: str | None) -> tuple[list[Entry], list[str]]:
    """The valid entries (all, or the one named by a path or ``task/protocol/method``) and one line per
    invalid one among them."""
    root = Path(root)
    if not root.is_dir():
        raise LeaderboardError(f"{root}: no leaderboard here (expected {root}/entries/ and {root}/README.md)")
    entries, problems = valid_entries(root)
    if which is None:
        return entries, problems
    path = Path(which)
    if not path.exists():
        parts = which.removesuffix(".yaml").split("/")
        if len(parts) != 3:
            raise LeaderboardError(f"{which}: no such entry; give its file or TASK/PROTOCOL/METHOD")
        path = entry_path(root, *parts)
    found = [e for e in entries if e.path.resolve() == path.resolve()]
    bad = [p for p in problems if Path(p.split(": ")[0]).resolve() == path.resolve()]
    if not found and not bad:
        raise LeaderboardError(f"{which}: no such entry under {root}/entries")
    return found, bad
