"""The leaderboard: one YAML entry per (task, protocol, method), raw per-seed values first.

``<root>/entries/<task>/<protocol>/<method>.yaml`` holds a finished run's provenance (method,
paper, code commit, hyperparameters and how they were tuned, protocol hash, data checksums,
environment) and its raw per-seed values. The raw values are the authority: the entry's
``summary`` is checked against them, and ``<root>/README.md`` is rendered from them alone.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import compare
from .registry import METHODS, TASKS, UnknownName
from .results import ResultError, load_summary, read_yaml, write_yaml
from .stats import mean_ci95

SCHEMA_VERSION = 1
DEFAULT_TUNING = "defaults from the method's paper/reference configs, not tuned"
BASELINE = "cbp"
START = "<!-- plastibench:leaderboard:start -->"
END = "<!-- plastibench:leaderboard:end -->"
INTRO = """# plastibench leaderboard

Methods for keeping plasticity in continual learning, measured against continual backprop (CBP)
on frozen, hashed protocols. Each entry in `entries/<task>/<protocol>/<method>.yaml` holds the raw
per-seed values of one run; every number below is recomputed from them. Add an entry with
`plastibench leaderboard submit RUN_DIR`, then `plastibench leaderboard render` and
`plastibench leaderboard check`.

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
}


class LeaderboardError(ValueError):
    """A refused submission or an unusable leaderboard root: the CLI prints it and exits 2."""


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
        return compare.Result(self.data["method"]["name"], results["per_seed"], results["final_diagnostics"])


def entry_path(root: Path, task: str, protocol: str, method: str) -> Path:
    return Path(root) / "entries" / task / protocol / f"{method}.yaml"


def _registry_protocol(task: str, protocol: str):
    return TASKS.get(task).protocol(protocol)


# ----- submit -----

def entry_from_run(run_dir: Path, tuning: str = DEFAULT_TUNING) -> dict[str, Any]:
    """The entry of a finished run directory; refuses unfinished runs and foreign protocol hashes."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LeaderboardError(f"{run_dir}: not a run directory")
    if not (run_dir / "summary.yaml").exists():
        raise LeaderboardError(f"{run_dir}: no summary.yaml; the run is unfinished (re-run its command to finish it)")
    try:
        summary = load_summary(run_dir)  # recomputed from metrics.csv, never summary.yaml's word
    except ResultError as exc:
        raise LeaderboardError(str(exc)) from None
    env = read_yaml(run_dir / "environment.yaml")
    seeds = read_yaml(run_dir / "config.yaml")["seeds"]
    method, task, name = summary["method"], summary["task"], summary["protocol"]
    try:
        proto = _registry_protocol(task, name)
        in_tree = METHODS.in_tree(method)
    except UnknownName as exc:
        raise LeaderboardError(f"{run_dir}: {exc.args[0]}") from None
    if summary["protocol_hash"] != proto.hash:
        raise LeaderboardError(f"{run_dir}: protocol hash {summary['protocol_hash']} is not the registry's "
                               f"{proto.hash} for {task}/{name}; re-run with the current protocol")
    if not in_tree:
        raise LeaderboardError(f"{run_dir}: method {method!r} is an out-of-tree plugin; the leaderboard ranks "
                               "only methods in methods/")
    if "TODO" in METHODS.get(method).paper:
        raise LeaderboardError(f"{run_dir}: method {method!r} still has a TODO in its `paper`; cite its paper "
                               "in methods/" + method + ".py first")
    return {
        "schema_version": SCHEMA_VERSION,
        "method": {"name": method, "paper": METHODS.get(method).paper, "code_commit": env.get("git_commit"),
                   "hyperparameters": summary["hparams"], "tuning": tuning},
        "protocol": {"task": task, "name": name, "hash": proto.hash, "metric": proto.metric,
                     "higher_is_better": proto.higher_is_better, "aggregate": summary["aggregate"]},
        "data": env.get("data", {}),
        "environment": {k: env[k] for k in ENV_KEYS if k in env},
        "wall_time_s": summary["wall_time_s"],
        "seeds": list(seeds),
        "results": {"per_seed": summary["per_seed"],
                    "final_diagnostics": {k: v["per_seed"] for k, v in summary["final_diagnostics"].items()}},
        "summary": _summary(summary["per_seed"]),
        "verified": False,
    }


def _summary(per_seed: dict[int, float]) -> dict[str, Any]:
    mean, low, high = mean_ci95(list(per_seed.values()))
    return {"n_seeds": len(per_seed), "mean": mean, "ci95": None if low is None else [low, high]}


def submit(run_dir: Path, root: Path, tuning: str = DEFAULT_TUNING, force: bool = False) -> Path:
    """Write the entry of ``run_dir`` under ``root``; an existing entry is replaced only with ``force``."""
    entry = entry_from_run(run_dir, tuning)
    path = entry_path(root, entry["protocol"]["task"], entry["protocol"]["name"], entry["method"]["name"])
    if path.exists() and not force:
        raise LeaderboardError(f"{path} exists; pass --force to replace it")
    write_yaml(path, entry)
    return path


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
    return problems


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
        found = summary_problems(entry.data) + registry_problems(root, entry)
        problems += [f"{entry.path}: {p}" for p in found]
        if not found:
            valid.append(entry)
    return valid, problems


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def raw_value_changes(root: Path, ref: str) -> list[str]:
    """Entries of ``ref`` whose seeds or raw values differ now (or that were removed)."""
    root = Path(root)
    if _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        raise LeaderboardError(f"--against {ref}: not a commit of the git repository holding {root}")
    listed = _git(root, "ls-tree", "-r", "-z", "--name-only", ref, "--", "entries").stdout.split("\0")
    problems = []
    for rel in sorted(p for p in listed if p.endswith(".yaml")):
        path = root / rel
        try:
            old = yaml.safe_load(_git(root, "show", f"{ref}:./{rel}").stdout)
            old_raw = (old["seeds"], old["results"]["per_seed"], old["results"]["final_diagnostics"])
        except (yaml.YAMLError, KeyError, TypeError):
            continue  # nothing readable to protect
        if not path.exists():
            problems.append(f"{path}: entry removed since {ref}")
            continue
        try:
            new = yaml.safe_load(path.read_text())
            new_raw = (new["seeds"], new["results"]["per_seed"], new["results"]["final_diagnostics"])
        except (yaml.YAMLError, KeyError, TypeError):
            continue  # already reported by the schema check
        changed = [name for name, a, b in zip(("seeds", "results.per_seed", "results.final_diagnostics"),
                                              old_raw, new_raw) if a != b]
        if changed:
            problems.append(f"{path}: raw values changed since {ref} ({', '.join(changed)}); accepted numbers "
                            "are immutable, submit a new run under a new protocol instead")
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
        problems += raw_value_changes(root, against)
    return n, problems


# ----- render -----

def _markdown_table(entries: list[Entry]) -> list[str]:
    task, name = entries[0].key
    proto = _registry_protocol(task, name)
    results = [e.result() for e in entries]
    baseline = BASELINE if any(r.label == BASELINE for r in results) else None
    rows = compare.statistics_table(results, baseline, proto.higher_is_better)
    lines = [f"### {compare.title(task, name, proto.hash, proto.metric, proto.higher_is_better)}", "",
             f"Per-seed score: mean of the per-task {proto.metric} over the last {proto.summary_tasks} of "
             f"{proto.n_tasks} tasks."
             + ("" if baseline else f" No {BASELINE} entry yet: the comparison columns are empty."), "",
             "| " + " | ".join(compare.header(BASELINE)) + " |",
             "|" + "|".join("---" if col == "method" else "---:" for col in compare.header(BASELINE)) + "|"]
    lines += ["| " + " | ".join(compare.cells(row, BASELINE)) + " |" for row in rows]
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
    lines += [f"- {note}" for note in compare.notes(BASELINE)] + [""]
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
