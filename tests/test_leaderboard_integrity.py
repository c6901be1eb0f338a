"""The leaderboard can't be fooled: recomputed submissions, unverified data, content hashes,
immutability against a git ref and replay verification, on real scr smoke runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from plastibench.cli_leaderboard import leaderboard_app
from plastibench.leaderboard import content_hash
from plastibench.results import read_metrics, read_yaml, write_yaml
from plastibench.runner import execute, plan
from plastibench.stats import mean_ci95

app = typer.Typer()
app.add_typer(leaderboard_app, name="leaderboard")
app.command("noop")(lambda: None)  # keep `leaderboard` a sub-command


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def assert_exit(result, code: int) -> list[str]:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    dirs = {}
    for method in ("bp", "cbp"):
        p = plan(method, "scr", "smoke", "0-2", {}, out)
        execute(p, device=torch.device("cpu"), checkpoint_every=1e9)
        dirs[method] = p.directory
    return dirs


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("board") / "leaderboard"
    for d in runs.values():
        assert_exit(invoke("leaderboard", "submit", d, "--root", root), 0)
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    return root


@pytest.fixture
def lb(board, tmp_path) -> Path:
    return Path(shutil.copytree(board, tmp_path / "leaderboard"))


def entry(root: Path, method: str) -> Path:
    return root / "entries" / "scr" / "smoke" / f"{method}.yaml"


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def forge(path: Path, change) -> None:
    """``change`` then bring the summary and the content hash in line, as a careful forger would."""
    def everything(d):
        change(d)
        mean, low, high = mean_ci95(list(d["results"]["per_seed"].values()))
        d["summary"] = {"n_seeds": len(d["seeds"]), "mean": mean, "ci95": None if low is None else [low, high]}
        d["content_hash"] = content_hash(d)
    edit(path, everything)


def check(root: Path, *extra, code: int) -> list[str]:
    return assert_exit(invoke("leaderboard", "check", "--root", root, *extra), code)


def copy_run(runs, method: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[method], tmp_path / f"{method}-copy"))


# ----- submit recomputes every number -----

def test_entry_numbers_come_from_metrics_csv(board, runs):
    data = read_yaml(entry(board, "cbp"))
    series = read_metrics(runs["cbp"] / "metrics.csv")["squared_error"]
    for seed in (0, 1, 2):
        assert data["results"]["per_seed"][seed] == pytest.approx(np.mean(series[seed][-1:]), rel=1e-12)
        assert data["replay"]["per_seed_task_metrics"][seed] == series[seed][:3]
    assert data["replay"]["tasks"] == 3 and data["replay"]["metric"] == "squared_error"
    assert set(data["content_hash"]) == {"sha256", "parts"} and len(data["content_hash"]["sha256"]) == 64
    assert check(board, code=0) == ["2 entries OK"]


def test_made_up_per_seed_fails_submit(runs, tmp_path):
    run = copy_run(runs, "bp", tmp_path)
    summary = read_yaml(run / "summary.yaml")
    summary["per_seed"][1] *= 0.5  # a better number, with mean and CI brought in line
    mean, low, high = mean_ci95(list(summary["per_seed"].values()))
    write_yaml(run / "summary.yaml", {**summary, "mean": mean, "ci95": [low, high]})
    lines = assert_exit(invoke("leaderboard", "submit", run, "--root", tmp_path / "lb"), 1)
    assert len(lines) == 1 and "summary.yaml disagrees with metrics.csv/config.yaml: per_seed[1]" in lines[0]
    assert not (tmp_path / "lb").exists()


@pytest.mark.parametrize("change, what", [
    (lambda s: s.update(mean=s["mean"] * 0.9), "mean is"),
    (lambda s: s["hparams"].update(replacement_rate=0.5), "hparams[replacement_rate] is 0.5"),
    (lambda s: s.update(n_seeds=4), "n_seeds is 4"),
])
def test_summary_disagreeing_with_the_raw_files_fails_submit(runs, tmp_path, change, what):
    run = copy_run(runs, "cbp", tmp_path)
    summary = read_yaml(run / "summary.yaml")
    change(summary)
    write_yaml(run / "summary.yaml", summary)
    lines = assert_exit(invoke("leaderboard", "submit", run, "--root", tmp_path / "lb"), 1)
    assert len(lines) == 1 and what in lines[0], lines


# ----- unverified data -----

def test_unverified_run_refused_without_the_flag_and_marked_with_it(board, runs, tmp_path):
    root = Path(shutil.copytree(board, tmp_path / "leaderboard"))
    run = copy_run(runs, "cbp", tmp_path)
    env = read_yaml(run / "environment.yaml")
    write_yaml(run / "environment.yaml", {**env, "data": {"mnist": {"sha256": "ab" * 32, "verified": False}}})
    lines = assert_exit(invoke("leaderboard", "submit", run, "--root", root, "--force"), 1)
    assert len(lines) == 1 and "unverified data" in lines[0] and "--allow-unverified" in lines[0]
    assert read_yaml(entry(root, "cbp"))["verified"] is True  # untouched
    assert_exit(invoke("leaderboard", "submit", run, "--root", root, "--force", "--allow-unverified"), 0)
    data = read_yaml(entry(root, "cbp"))
    assert data["verified"] is False and data["data"]["mnist"]["verified"] is False
    assert check(root, code=1)[-1].endswith("stale; run `plastibench leaderboard render --root "
                                            f"{root}` and commit it")
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    assert check(root, code=0) == ["2 entries OK"]
    text = (root / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "rank" not in line]
    assert rows[-1].startswith("| unverified | cbp † |"), rows
    assert "| bp |" in rows[0] and "unverified" not in rows[0]
    assert "† Run on data whose checksums did not match" in text
    # `verified` states the data record: it cannot be flipped by hand
    edit(entry(root, "cbp"), lambda d: d.update(verified=True))
    assert any("verified is True but the data record says unverified" in line for line in check(root, code=1))


# ----- content hash -----

def test_edited_hyperparameter_fails_check(lb):
    path = entry(lb, "cbp")
    edit(path, lambda d: d["method"]["hyperparameters"].update(replacement_rate=0.5))
    lines = check(lb, code=1)
    assert lines[0].startswith(f"{path}: content hash mismatch: hyperparameters differ"), lines


@pytest.mark.parametrize("change, part", [
    (lambda d: d["results"]["per_seed"].update({0: 0.01}), "results.per_seed"),
    (lambda d: d["replay"]["per_seed_task_metrics"][2].__setitem__(0, 0.5), "replay"),
    (lambda d: d["data"].update(mnist={"sha256": "00"}), "data"),
    (lambda d: d["protocol"].update(name="short"), "protocol"),
])
def test_any_hashed_edit_fails_check_naming_the_part(lb, change, part):
    path = entry(lb, "bp")
    edit(path, change)
    assert any(line.startswith(f"{path}: content hash mismatch: {part} differ") for line in check(lb, code=1))


# ----- check --against GIT_REF: merged entries are immutable -----

def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo_board(board, tmp_path) -> Path:
    """A copy of the board committed in a fresh git repository."""
    repo = tmp_path / "repo"
    root = Path(shutil.copytree(board, repo / "leaderboard"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "board")
    return root


def test_edited_hyperparameter_fails_against_even_when_rehashed(repo_board):
    path = entry(repo_board, "cbp")
    old = read_yaml(path)["method"]["hyperparameters"]["replacement_rate"]
    forge(path, lambda d: d["method"]["hyperparameters"].update(replacement_rate=0.5))
    assert_exit(invoke("leaderboard", "render", "--root", repo_board), 0)
    assert check(repo_board, code=0) == ["2 entries OK"]
    lines = check(repo_board, "--against", "HEAD", code=1)
    assert lines == [f"{path}: changed since HEAD (hyperparameters replacement_rate {old!r} -> 0.5); merged "
                     "entries are immutable, submit a new run under a new protocol instead"]


def test_added_seed_fails_against(repo_board):
    path = entry(repo_board, "bp")

    def add_seed(d):
        d["seeds"].append(3)
        d["results"]["per_seed"][3] = 0.1
        for values in d["results"]["final_diagnostics"].values():
            values[3] = values[0]
        d["replay"]["per_seed_task_metrics"][3] = d["replay"]["per_seed_task_metrics"][0]
    forge(path, add_seed)
    assert_exit(invoke("leaderboard", "render", "--root", repo_board), 0)
    assert check(repo_board, code=0) == ["2 entries OK"]
    lines = check(repo_board, "--against", "HEAD", code=1)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: changed since HEAD (seeds added [3]; results.per_seed")


def test_deleted_entry_fails_against(repo_board):
    entry(repo_board, "bp").unlink()
    assert_exit(invoke("leaderboard", "render", "--root", repo_board), 0)
    assert check(repo_board, code=0) == ["1 entries OK"]
    assert check(repo_board, "--against", "HEAD", code=1) == [
        f"{entry(repo_board, 'bp')}: entry removed since HEAD; merged entries are immutable"]


def test_new_entry_passes_against(repo_board, runs):
    entry(repo_board, "cbp").unlink()
    git(repo_board.parent, "commit", "-qam", "without cbp")
    assert_exit(invoke("leaderboard", "submit", runs["cbp"], "--root", repo_board), 0)
    assert_exit(invoke("leaderboard", "render", "--root", repo_board), 0)
    assert check(repo_board, "--against", "HEAD", code=0) == ["2 entries OK"]


def test_entry_of_the_old_schema_may_gain_its_replay_values(repo_board):
    """The schema-1 entries of main had no replay values: adding them is not a change."""
    path = entry(repo_board, "bp")
    data = read_yaml(path)
    old = {k: v for k, v in data.items() if k not in ("replay", "content_hash")}
    write_yaml(path, {**old, "schema_version": 1})
    git(repo_board.parent, "commit", "-qam", "schema 1")
    write_yaml(path, data)
    assert check(repo_board, "--against", "HEAD", code=0) == ["2 entries OK"]


# ----- verify: re-run the first tasks here -----

def test_verify_passes_on_a_genuine_entry(board):
    lines = assert_exit(invoke("leaderboard", "verify", "--root", board, "--seeds", "2", "--tasks", "2",
                               "--sample-seed", "0"), 0)
    assert lines[-1] == "2 entries reproduced"
    assert all("replay OK" in line and "2 tasks" in line for line in lines[:-1]), lines


def test_verify_fails_when_a_stored_replay_value_is_altered(lb):
    path = entry(lb, "cbp")
    forge(path, lambda d: d["replay"]["per_seed_task_metrics"][1].__setitem__(
        0, d["replay"]["per_seed_task_metrics"][1][0] * (1 + 1e-3)))
    assert check(lb, code=0) == ["2 entries OK"]  # the hash was brought in line: only a re-run finds it
    lines = assert_exit(invoke("leaderboard", "verify", "scr/smoke/cbp", "--root", lb, "--seeds", "3"), 1)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: replay differs from the stored values "
                                                   "(seeds [0, 1, 2], 1 task, rtol 0.0001): seed 1 task 0 stored")
    # the other entry still passes, and an unaltered value within tolerance is fine
    assert_exit(invoke("leaderboard", "verify", str(entry(lb, "bp")), "--root", lb, "--seeds", "3"), 0)


def test_verify_reports_entries_that_fail_their_checks(lb):
    path = entry(lb, "bp")
    edit(path, lambda d: d["replay"]["per_seed_task_metrics"][0].__setitem__(0, 9.0))  # not rehashed
    lines = assert_exit(invoke("leaderboard", "verify", "--root", lb, "--seeds", "1"), 1)
    assert lines[0].startswith(f"{path}: content hash mismatch: replay differ")
    assert lines[1].startswith(f"{entry(lb, 'cbp')}: replay OK")
    out = assert_exit(invoke("leaderboard", "verify", "scr/smoke/nosuch", "--root", lb), 2)
    assert "no such entry" in out[-1]
