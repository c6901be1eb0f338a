"""A result belongs to the code and data that made it; one computation per run; files as the umask says.

Run identity (code digest and data record in the directory hash), ``run --force``, "cached" in the
table, summaries recomputed from metrics.csv on every read, environment.yaml's provenance, file
modes under the umask, and two processes asking for one run at once.
"""

from __future__ import annotations

import ast
import hashlib
import gzip
import importlib
import os
import shutil
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench import identity, runner
from plastibench.cli import app
from plastibench.data import mnist
from plastibench.registry import METHODS, TASKS
from plastibench.results import load_summary, read_metrics, read_yaml
from plastibench.runner import execute, plan

CPU = torch.device("cpu")
WIDE = {"COLUMNS": "250"}
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    assert "Traceback" not in result.output
    return result


def scr_run(out: Path, *extra, method: str = "bp", seeds: str = "0-1"):
    result = invoke("run", "--method", method, "--task", "scr", "--protocol", "smoke", "--device", "cpu",
                    "--seeds", seeds, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return result


def rows(output: str) -> dict[str, list[str]]:
    """Body rows of the results table by method."""
    cells = [[c.strip() for c in line.strip().strip("│").split("│")]
             for line in output.splitlines() if line.strip().startswith("│")]
    return {r[0]: r for r in cells}


def run_dirs(out: Path, task: str = "scr") -> list[Path]:
    return sorted((out / task / "smoke").iterdir())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """``--out`` root of one finished ``bp`` scr/smoke run of seeds 0-1 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "runs"
    scr_run(out)
    return out


@pytest.fixture
def runs(finished, tmp_path) -> Path:
    """A private copy of the finished runs."""
    return Path(shutil.copytree(finished, tmp_path / "runs"))


@pytest.fixture
def count_engines(monkeypatch) -> list:
    """Every Engine that runner builds, recorded."""
    built = []

    class Counting(runner.Engine):
        def __init__(self, *args, **kwargs):
            built.append(kwargs["directory"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runner, "Engine", Counting)
    return built


# --------------------------------------------------------------------------------------------
# identity: code
# --------------------------------------------------------------------------------------------

METHOD_SOURCE = '''
from plastibench.methods.bp import Backprop
from plastibench.registry import register_method


@register_method("idtest")
class IdTest(Backprop):
    """Backprop under another name, in a module that the test edits."""
    summary = "test method"
'''


@pytest.fixture
def temp_method(tmp_path, monkeypatch):
    """A method ``idtest`` defined in a module file of its own; yields that file."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    source = folder / "idtest_method.py"
    source.write_text(METHOD_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    METHODS.names()  # discover the in-tree methods first
    importlib.import_module("idtest_method")
    yield source
    METHODS._items.pop("idtest", None)
    METHODS._origin.pop("idtest", None)
    sys.modules.pop("idtest_method", None)


def test_digest_covers_method_task_engine_and_their_imports():
    files = identity.source_files(identity.run_modules(METHODS.get("cbp+l2"), TASKS.get("pmnist")))
    for key in ("plastibench/methods/cbp.py", "plastibench/methods/l2.py", "plastibench/tasks/pmnist.py",
                "plastibench/engine.py", "plastibench/compose.py", "plastibench/data/mnist.py",
                "plastibench/capture.py", "plastibench/results.py", "plastibench/__init__.py"):
        assert key in files, key
    assert "plastibench/methods/snp.py" not in files and "plastibench/cli.py" not in files
    bp = identity.source_files(identity.run_modules(METHODS.get("bp"), TASKS.get("scr")))
    assert "plastibench/methods/cbp.py" not in bp and "plastibench/data/mnist.py" not in bp


def test_a_digest_parses_only_sources_it_has_not_read(monkeypatch, temp_method):
    """Parsing is most of a digest's cost (every ``run`` pays it): an unchanged file is not parsed
    again; an edited one is, and the module its new import names enters the digest."""
    parsed, parse = [], ast.parse
    counting = types.SimpleNamespace(**{**vars(ast), "parse": lambda source, filename, **kw: parsed.append(filename)
                                        or parse(source, filename, **kw)})
    monkeypatch.setattr(identity, "ast", counting)  # identity's ast only: pytest's own stays
    roots = identity.run_modules(METHODS.get("idtest"), TASKS.get("scr"))
    first = identity.code_digest(METHODS.get("idtest"), TASKS.get("scr"))
    parsed.clear()
    assert identity.code_digest(METHODS.get("idtest"), TASKS.get("scr")) == first and parsed == []
    assert "plastibench/evaluate.py" not in identity.source_files(roots)
    temp_method.write_text(METHOD_SOURCE + "from plastibench import evaluate\n")
    assert "plastibench/evaluate.py" in identity.source_files(roots)
    assert parsed.count(str(temp_method)) == 1
    assert identity.code_digest(METHODS.get("idtest"), TASKS.get("scr")) != first


def test_editing_the_method_file_gives_a_new_run_directory(tmp_path, temp_method):
    out = tmp_path / "runs"
    first = scr_run(out, method="idtest", seeds="0")
    before = plan("idtest", "scr", "smoke", "0", {}, out)
    temp_method.write_text(METHOD_SOURCE + "\n# an edit: the result may differ now\n")
    after = plan("idtest", "scr", "smoke", "0", {}, out)
    assert after.config["code_digest"] != before.config["code_digest"]
    assert after.directory != before.directory and before.done and not after.done
    second = scr_run(out, method="idtest", seeds="0")
    assert rows(first.output)["idtest"][-1] == "computed"
    assert rows(second.output)["idtest"][-1] == "computed"  # the old result is not served
    assert rows(second.output)["idtest"][4] == str(after.directory)
    assert len(run_dirs(out)) == 2
    config = read_yaml(after.directory / "config.yaml")
    assert config["code_digest"] == after.config["code_digest"] and config["data"] == {}


# --------------------------------------------------------------------------------------------
# identity: data
# --------------------------------------------------------------------------------------------

def pmnist_run(out: Path, data: Path, *extra):
    result = invoke("run", "--method", "bp", "--task", "pmnist", "--protocol", "smoke", "--device", "cpu",
                    "--seeds", "0", "--out", out, "--data-dir", data, *extra)
    assert result.exit_code == 0, result.output
    return rows(result.output)["bp"]


def tiny_checksums(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256(gzip.decompress((root / "mnist" / f"{name}.gz").read_bytes())).hexdigest()
            for name in mnist.SPLITS["train"]}


def alter_images(root: Path) -> None:
    """Other training images, same shape, same names."""
    images = np.random.default_rng(1).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    mnist.write_idx(root / "mnist" / "train-images-idx3-ubyte.gz", images)


def test_verified_and_unverified_and_altered_data_get_their_own_directories(tmp_path, tiny_mnist, offline,
                                                                            monkeypatch):
    out = tmp_path / "runs"
    unverified = pmnist_run(out, tiny_mnist, "--no-verify")
    # the tiny files become "official": a verified run succeeds on them
    monkeypatch.setattr(mnist, "SHA256", {**mnist.SHA256, **tiny_checksums(tiny_mnist)})
    verified = pmnist_run(out, tiny_mnist)
    assert verified[-1] == "computed" and verified[4] != unverified[4]
    alter_images(tiny_mnist)  # the data changes on disk
    altered = pmnist_run(out, tiny_mnist, "--no-verify")
    assert altered[-1] == "computed" and altered[4] not in (verified[4], unverified[4])
    # the verified run after the unverified run on altered data is not served from either
    monkeypatch.setattr(mnist, "SHA256", {**mnist.SHA256, **tiny_checksums(tiny_mnist)})
    again = pmnist_run(out, tiny_mnist)
    assert again[-1] == "computed" and again[4] not in (verified[4], unverified[4], altered[4])
    records = {d.name: read_yaml(d / "config.yaml")["data"]["mnist"] for d in run_dirs(out, "pmnist")}
    assert len(records) == 4
    assert sorted(r["verified"] for r in records.values()) == [False, False, True, True]
    assert len({r["sha256"]["train-images-idx3-ubyte"] for r in records.values()}) == 2
    # the same unverified command again is read
    assert pmnist_run(out, tiny_mnist, "--no-verify")[-1] == "cached"


# --------------------------------------------------------------------------------------------
# cached, --force
# --------------------------------------------------------------------------------------------

def test_second_identical_run_is_read_and_says_cached(runs, count_engines):
    result = scr_run(runs)
    assert rows(result.output)["bp"][-1] == "cached"
    assert count_engines == []


def test_force_recomputes_in_place(runs, count_engines):
    (directory,) = run_dirs(runs)
    before = read_metrics(directory / "metrics.csv")
    (directory / "metrics.csv").write_text("seed,task_index,metric,value\n")  # to be replaced
    result = scr_run(runs, "--force")
    assert rows(result.output)["bp"][-1] == "computed" and rows(result.output)["bp"][4] == str(directory)
    assert count_engines == [directory] and run_dirs(runs) == [directory]
    assert read_metrics(directory / "metrics.csv") == before  # recomputed, bit for bit
    assert rows(scr_run(runs).output)["bp"][-1] == "cached"


# --------------------------------------------------------------------------------------------
# summary.yaml is recomputed from metrics.csv, never trusted
# --------------------------------------------------------------------------------------------

EDITS = {
    "made-up mean": lambda s: yaml.safe_dump({**s, "mean": 0.0001, "per_seed": {0: 0.0, 1: 0.0002}}),
    "empty": lambda s: "",
    "garbage": lambda s: "mean: [unclosed\n  : {",
    "not a mapping": lambda s: "- 1\n- 2\n",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_summary_is_recomputed_on_read(runs, edit):
    (directory,) = run_dirs(runs)
    truth = read_yaml(directory / "summary.yaml")
    (directory / "summary.yaml").write_text(EDITS[edit](truth))
    assert load_summary(directory) == truth
    assert read_yaml(directory / "summary.yaml") == truth  # rewritten


@pytest.mark.parametrize("edit", ["made-up mean", "garbage"])
def test_edited_summary_is_recomputed_on_run_and_compare(runs, edit, count_engines):
    (directory,) = run_dirs(runs)
    truth = read_yaml(directory / "summary.yaml")
    (directory / "summary.yaml").write_text(EDITS[edit](truth))
    row = rows(scr_run(runs).output)["bp"]
    assert row[-1] == "cached" and row[1] == f"{truth['mean']:.4f}" and count_engines == []
    assert read_yaml(directory / "summary.yaml") == truth
    (directory / "summary.yaml").write_text(EDITS[edit](truth))
    result = invoke("compare", directory)
    assert result.exit_code == 0, result.output
    assert f"{truth['mean']:#.4g}" in result.output and "0.0001" not in result.output


def test_recomputed_summary_matches_the_engines_and_marks_end_of_run_values(runs):
    (directory,) = run_dirs(runs)
    summary = load_summary(directory)
    assert summary["recomputed_from"] == "metrics.csv" and "final.yaml" in summary["end_of_run"]
    final = read_yaml(directory / "final.yaml")
    assert summary["final_diagnostics"] == final["final_diagnostics"] and summary["final_diagnostics"]
    assert summary["wall_time_s"] == final["wall_time_s"]


def test_summary_without_full_metrics_is_not_a_finished_run(runs, count_engines):
    (directory,) = run_dirs(runs)
    truth = read_yaml(directory / "summary.yaml")
    lines = (directory / "metrics.csv").read_text().splitlines()
    (directory / "metrics.csv").write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(ValueError, match="unfinished or damaged"):
        load_summary(directory)
    # run finishes it from its checkpoint (the checkpoint is at the end): same numbers
    assert rows(scr_run(runs).output)["bp"][-1] == "computed"
    assert read_yaml(directory / "summary.yaml")["per_seed"] == truth["per_seed"]


# --------------------------------------------------------------------------------------------
# environment.yaml
# --------------------------------------------------------------------------------------------

def test_environment_records_command_time_host_and_git_state(finished):
    (directory,) = run_dirs(finished)
    env = read_yaml(directory / "environment.yaml")
    assert env["command"] == " ".join(sys.argv)
    stamp = env["timestamp"]
    assert stamp.endswith("+00:00") and time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    assert env["host"] == os.uname().nodename
    assert env["git_dirty"] in (True, False, None)
    if (ROOT / ".git").exists():
        porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT / "plastibench",
                                   capture_output=True, text=True).stdout
        assert env["git_dirty"] == bool(porcelain.strip())


# --------------------------------------------------------------------------------------------
# file modes follow the umask
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = plan("bp", "scr", "smoke", "0", {}, tmp_path / "runs")
        execute(p, device=CPU)
        (p.directory / "summary.yaml").write_text("")
        load_summary(p.directory)  # rewrites it
    finally:
        os.umask(old)
    files = sorted(f for f in p.directory.iterdir() if f.is_file())
    names = {f.name for f in files}
    assert {"config.yaml", "environment.yaml", "metrics.csv", "checkpoint.pt", "summary.yaml", "final.yaml",
            ".lock"} <= names
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {n: oct(mode) for n in names}


# --------------------------------------------------------------------------------------------
# two processes, one computation
# --------------------------------------------------------------------------------------------

CHILD = '''
import sys
import plastibench.runner as runner

marker = sys.argv[1]


class Counting(runner.Engine):
    def __init__(self, *args, **kwargs):
        with open(marker, "a") as f:
            f.write("engine\\n")
        super().__init__(*args, **kwargs)


runner.Engine = Counting
from plastibench.cli import app
app(sys.argv[2:], prog_name="plastibench")
'''


def test_two_processes_asking_for_one_run_compute_it_once(tmp_path):
    out, marker = tmp_path / "runs", tmp_path / "engines.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    p = plan("bp", "scr", "smoke", "0", {}, out)
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, str(script), str(marker), "run", "-m", "bp", "-t", "scr", "-p", "smoke",
            "--seeds", "0", "--device", "cpu", "--out", str(out)]
    logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
    procs = []
    # Hold the run's lock until both processes wait for it, so that they truly ask at once.
    with identity.run_lock(p.directory):
        for stdout, stderr in logs:
            with open(stdout, "w") as o, open(stderr, "w") as e:
                procs.append(subprocess.Popen(args, stdout=o, stderr=e, env=env, cwd=tmp_path))
        deadline = time.monotonic() + 240
        while not all("waiting" in e.read_text() for _, e in logs):
            assert time.monotonic() < deadline, [e.read_text() for _, e in logs]
            assert all(proc.poll() is None for proc in procs), [e.read_text() for _, e in logs]
            time.sleep(0.2)
        assert not marker.exists()
    for proc in procs:
        assert proc.wait(timeout=300) == 0, [e.read_text() for _, e in logs]
    results = sorted(rows(o.read_text())["bp"][-1] for o, _ in logs)
    assert results == ["cached", "computed"]
    assert marker.read_text() == "engine\n"  # one computation in all
    means = {rows(o.read_text())["bp"][1] for o, _ in logs}
    assert len(means) == 1 and run_dirs(out) == [p.directory]
    assert load_summary(p.directory)["n_seeds"] == 1
    assert not list(p.directory.glob("*.tmp"))
