"""Leaderboard entries and the statistics table: submit -> render -> check on real smoke runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import typer
import yaml
from typer.testing import CliRunner

from plastibench import compare
from plastibench.cli_leaderboard import compare_command, leaderboard_app
from plastibench.leaderboard import END, START, content_hash
from plastibench.registry import METHODS, TASKS
from plastibench.results import protocol_from_spec, read_yaml, write_yaml
from plastibench.runner import execute, plan
from plastibench.stats import holm, mean_ci95

app = typer.Typer()
app.add_typer(leaderboard_app, name="leaderboard")
app.command("compare")(compare_command)

# bp and cbp share seeds (paired tests), l2 has 11 seeds (Welch), snp 5 seeds (preliminary).
RUNS = {"bp": "0-11", "cbp": "0-11", "l2": "0-10", "snp": "0-4"}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def assert_exit(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished smoke runs of scr, one directory per method."""
    out = tmp_path_factory.mktemp("runs")
    dirs = {}
    for method, seeds in RUNS.items():
        p = plan(method, "scr", "smoke", seeds, {}, out)
        execute(p, device=torch.device("cpu"), checkpoint_every=1e9)
        dirs[method] = p.directory
    return dirs


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory) -> Path:
    """A rendered leaderboard of all runs (read-only: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("board") / "leaderboard"
    for d in runs.values():
        assert_exit(invoke("leaderboard", "submit", d, "--root", root), 0)
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    return root


@pytest.fixture
def lb(board, tmp_path) -> Path:
    """A private copy of the rendered leaderboard."""
    return Path(shutil.copytree(board, tmp_path / "leaderboard"))


def entry(root: Path, method: str) -> Path:
    return root / "entries" / "scr" / "smoke" / f"{method}.yaml"


def table(root: Path) -> dict[str, dict[str, str]]:
    """The rendered scr/smoke table as {method: {column: cell}}, in row order."""
    lines = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    return {row["method"]: row for row in rows}


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def check(root: Path, *extra: str, code: int) -> list[str]:
    return assert_exit(invoke("leaderboard", "check", "--root", root, *extra), code).splitlines()


# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------

def test_entry_holds_provenance_and_raw_values(board, runs):
    data = read_yaml(entry(board, "cbp"))
    summary = read_yaml(runs["cbp"] / "summary.yaml")
    env = read_yaml(runs["cbp"] / "environment.yaml")
    proto = TASKS.get("scr").protocol("smoke")
    assert data["schema_version"] == 2 and data["verified"] is True  # synthetic data: nothing unverified
    assert data["method"]["paper"] == METHODS.get("cbp").paper
    assert data["method"]["code_commit"] == env["git_commit"]
    assert data["method"]["hyperparameters"] == summary["hparams"]
    assert "not tuned" in data["method"]["tuning"]
    assert data["protocol"] == {"task": "scr", "name": "smoke", "hash": proto.hash, "metric": proto.metric,
                                "higher_is_better": proto.higher_is_better, "aggregate": summary["aggregate"]}
    assert data["data"] == env["data"]
    assert {"python", "torch", "device", "platform", "processor", "cpu_count"} <= set(data["environment"])
    assert data["seeds"] == list(range(12))
    assert data["results"]["per_seed"] == summary["per_seed"]
    assert data["results"]["final_diagnostics"]["dead_fraction/layer0"] == \
        summary["final_diagnostics"]["dead_fraction/layer0"]["per_seed"]
    assert data["summary"] == {"n_seeds": 12, "mean": summary["mean"], "ci95": summary["ci95"]}
    assert data["wall_time_s"] == summary["wall_time_s"]


def test_submit_records_tuning_and_needs_force_to_overwrite(runs, tmp_path):
    root = tmp_path / "lb"
    assert_exit(invoke("leaderboard", "submit", runs["bp"], "--root", root, "--tuning", "grid over lr"), 0)
    out = assert_exit(invoke("leaderboard", "submit", runs["bp"], "--root", root), 2)
    assert "--force" in out and len(out.strip().splitlines()) == 1
    assert read_yaml(entry(root, "bp"))["method"]["tuning"] == "grid over lr"
    assert_exit(invoke("leaderboard", "submit", runs["bp"], "--root", root, "--force"), 0)
    assert "not tuned" in read_yaml(entry(root, "bp"))["method"]["tuning"]


def test_submit_refuses_an_unfinished_run(runs, tmp_path):
    run = Path(shutil.copytree(runs["bp"], tmp_path / "bp-unfinished"))
    (run / "summary.yaml").unlink()
    out = assert_exit(invoke("leaderboard", "submit", run, "--root", tmp_path / "lb"), 2)
    assert "unfinished" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "lb").exists()


def with_protocol(run: Path, **changes) -> str:
    """Make ``run`` a run of another protocol in its config.yaml (the summary's source); its hash."""
    config = read_yaml(run / "config.yaml")
    config["protocol_spec"].update(changes)
    config["protocol_hash"] = protocol_from_spec(config["protocol_spec"]).hash
    write_yaml(run / "config.yaml", config)
    summary = read_yaml(run / "summary.yaml")  # a coherent run of that protocol: its summary agrees
    summary["protocol_hash"] = config["protocol_hash"]
    write_yaml(run / "summary.yaml", summary)
    return config["protocol_hash"]


def test_submit_refuses_a_foreign_protocol_hash(runs, tmp_path):
    run = Path(shutil.copytree(runs["bp"], tmp_path / "bp-old"))
    old = with_protocol(run, version=0)  # summaries are recomputed from config.yaml + metrics.csv
    out = assert_exit(invoke("leaderboard", "submit", run, "--root", tmp_path / "lb"), 2)
    assert old in out and "registry" in out and len(out.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------

def per_seed(runs, method) -> dict[int, float]:
    return read_yaml(runs[method] / "summary.yaml")["per_seed"]


def test_rendered_means_and_cis_are_scipys_t_interval(board, runs):
    rows = table(board)
    for method in RUNS:
        x = np.array(list(per_seed(runs, method).values()))
        low, high = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert rows[method]["mean [95% CI]"] == f"{x.mean():#.4g} [{low:#.4g}, {high:#.4g}]"
        assert rows[method]["seeds"] == str(len(x))


def test_rendered_comparisons_against_cbp(board, runs):
    rows = table(board)
    cbp = per_seed(runs, "cbp")
    assert [rows["cbp"][c] for c in ("Δ vs cbp [95% CI]", "p (Holm)", "P(better than cbp)")] == ["—"] * 3
    paired = scipy.stats.ttest_rel([per_seed(runs, "bp")[s] for s in cbp], list(cbp.values()))
    welch = scipy.stats.ttest_ind(list(per_seed(runs, "l2").values()), list(cbp.values()), equal_var=False)
    snp = scipy.stats.ttest_ind(list(per_seed(runs, "snp").values()), list(cbp.values()), equal_var=False)
    adjusted = holm([paired.pvalue, welch.pvalue, snp.pvalue])
    for method, ref, marker, p in (("bp", paired, "", adjusted[0]), ("l2", welch, " W", adjusted[1]),
                                   ("snp", snp, " W", adjusted[2])):
        x = np.array(list(per_seed(runs, method).values()))
        ci = ref.confidence_interval(0.95)
        diff = x.mean() - np.mean(list(cbp.values()))
        assert rows[method]["Δ vs cbp [95% CI]"] == f"{diff:#.4g} [{ci.low:#.4g}, {ci.high:#.4g}]{marker}"
        assert rows[method]["p (Holm)"] == compare.prob(p)
        wins = np.mean([[1.0 if a < b else 0.5 if a == b else 0.0 for b in cbp.values()] for a in x])
        assert rows[method]["P(better than cbp)"] == f"{wins:.4f}"  # lower squared error is better


def test_rendered_rank_groups_and_preliminary_last(board):
    rows = table(board)
    assert list(rows)[-1] == "snp" and rows["snp"]["rank"] == "preliminary"
    ranked = [m for m in rows if m != "snp"]
    assert all(rows[m]["rank"].isdigit() for m in ranked)
    ranks = [int(rows[m]["rank"]) for m in ranked]
    assert ranks == sorted(ranks) and ranks[0] == 1


def test_rendered_diagnostics_average_layers_then_seeds(board, runs):
    summary = read_yaml(runs["cbp"] / "summary.yaml")["final_diagnostics"]
    assert table(board)["cbp"]["dead units"] == f"{summary['dead_fraction/layer0']['mean']:#.4g}"
    assert table(board)["cbp"]["effective rank"] == f"{summary['effective_rank/layer0']['mean']:#.4g}"


def test_render_keeps_prose_outside_the_markers_and_is_deterministic(lb):
    readme = lb / "README.md"
    text = readme.read_text().replace(START, "Intro written by a maintainer.\n\n" + START)
    readme.write_text(text + "\nClosing notes.\n")
    before = readme.read_text()
    block = before[before.index(START):before.index(END)]
    readme.write_text(before.replace(block, START + "\nold table\n"))
    assert_exit(invoke("leaderboard", "render", "--root", lb), 0)
    assert readme.read_text() == before
    assert_exit(invoke("leaderboard", "render", "--root", lb), 0)
    assert readme.read_text() == before


def test_render_appends_markers_to_a_readme_without_them(tmp_path, runs):
    root = tmp_path / "lb"
    assert_exit(invoke("leaderboard", "submit", runs["cbp"], "--root", root), 0)
    (root / "README.md").write_text("# Our board\n\nSome prose.\n")
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    text = (root / "README.md").read_text()
    assert text.startswith("# Our board\n\nSome prose.\n\n" + START) and text.rstrip().endswith(END)
    assert "| 1 | cbp |" in text
    check(root, code=0)


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------

def test_check_passes_on_a_fresh_board(board):
    assert check(board, code=0) == ["4 entries OK"]


def test_changed_raw_value_fails_naming_the_file(lb):
    path = entry(lb, "bp")
    edit(path, lambda d: d["results"]["per_seed"].__setitem__(3, d["results"]["per_seed"][3] + 0.01))
    lines = check(lb, code=1)
    assert any(line.startswith(f"{path}: summary.mean") for line in lines), lines
    assert any(line.startswith(f"{path}: summary.ci95") for line in lines), lines


def test_hand_edited_summary_fails_naming_the_file(lb):
    path = entry(lb, "cbp")
    edit(path, lambda d: d["summary"]["ci95"].__setitem__(0, d["summary"]["ci95"][0] * (1 + 1e-6)))
    lines = check(lb, code=1)
    assert lines[0].startswith(f"{path}: summary.ci95 [") and "Student-t" in lines[0]
    assert lines[1:] == [f"{lb / 'README.md'}: stale; run `plastibench leaderboard render --root {lb}` and "
                         "commit it"]  # render leaves out entries that fail their checks


def test_summary_within_relative_tolerance_passes(lb):
    edit(entry(lb, "cbp"), lambda d: d["summary"].__setitem__("mean", d["summary"]["mean"] * (1 + 1e-12)))
    check(lb, code=0)


def test_stale_readme_fails(lb):
    readme = lb / "README.md"
    readme.write_text(readme.read_text().replace("| 12 |", "| 13 |", 1))
    assert check(lb, code=1) == [f"{readme}: stale; run `plastibench leaderboard render --root {lb}` and commit it"]
    readme.unlink()
    assert check(lb, code=1)[0].startswith(f"{readme}: stale")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["protocol"].__setitem__("hash", "ffffffffffffffff"), "protocol hash ffffffffffffffff is not"),
    (lambda d: d["protocol"].__setitem__("higher_is_better", True), "protocol.higher_is_better True is not"),
    (lambda d: d["summary"].__setitem__("mean", "1.2"), "field summary.mean should be int or float, not str"),
    (lambda d: d["method"].pop("paper"), "missing field method.paper"),
    (lambda d: d.__setitem__("verified", "no"), "field verified should be bool"),
    (lambda d: d["results"]["per_seed"].pop(0), "results.per_seed must map exactly the seeds"),
    (lambda d: d["method"].__setitem__("name", "cbp"), "path does not match its task/protocol/method"),
])
def test_malformed_entries_fail(lb, change, message):
    path = entry(lb, "l2")
    edit(path, change)
    lines = check(lb, code=1)
    assert any(line.startswith(f"{path}: {message}") for line in lines), lines


def test_unparseable_entry_fails(lb):
    path = entry(lb, "bp")
    path.write_text("method: [unclosed\n")
    lines = check(lb, code=1)
    assert lines[0].startswith(f"{path}: does not parse as YAML")


def test_unknown_method_fails(lb):
    path = entry(lb, "bp").with_name("nosuch.yaml")
    entry(lb, "bp").rename(path)
    edit(path, lambda d: d["method"].__setitem__("name", "nosuch"))
    lines = check(lb, code=1)
    assert f"{path}: method 'nosuch' is not registered in-tree (no file in methods/ registers it)" in lines


def test_out_of_tree_method_fails(lb, monkeypatch):
    METHODS.names()  # discover the in-tree methods first
    plugin = type("Plugin", (METHODS.get("bp"),), {"__module__": "someone_elses_package"})
    monkeypatch.setitem(METHODS._items, "plugin", plugin)
    monkeypatch.setitem(METHODS._origin, "plugin", "someone_elses_package")
    path = entry(lb, "bp").with_name("plugin.yaml")
    entry(lb, "bp").rename(path)
    edit(path, lambda d: d["method"].__setitem__("name", "plugin"))
    assert f"{path}: method 'plugin' is an out-of-tree plugin; only methods in methods/ are ranked" in \
        check(lb, code=1)


def test_render_skips_invalid_entries(lb):
    edit(entry(lb, "l2"), lambda d: d["protocol"].__setitem__("hash", "ffffffffffffffff"))
    out = assert_exit(invoke("leaderboard", "render", "--root", lb), 0)
    assert f"skipped {entry(lb, 'l2')}: protocol hash" in out
    assert "l2" not in table(lb) and "bp" in table(lb)


def test_check_of_a_missing_root_is_a_usage_error(tmp_path):
    out = assert_exit(invoke("leaderboard", "check", "--root", tmp_path / "nothing"), 2)
    assert "no leaderboard here" in out


# --------------------------------------------------------------------------------------------
# check --against GIT_REF: accepted raw values are immutable
# --------------------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_against_git_ref(board, runs, tmp_path):
    repo = tmp_path / "repo"
    root = Path(shutil.copytree(board, repo / "leaderboard"))
    entry(root, "l2").unlink()
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "board")
    # a new entry is fine
    assert_exit(invoke("leaderboard", "submit", runs["l2"], "--root", root), 0)
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    assert check(root, "--against", "HEAD", code=0) == ["4 entries OK"]
    # a changed raw value is not, even with its summary and README brought in line
    path = entry(root, "bp")
    edit(path, lambda d: d["results"]["per_seed"].__setitem__(0, 0.25))
    mean, low, high = mean_ci95(list(read_yaml(path)["results"]["per_seed"].values()))
    edit(path, lambda d: d["summary"].update(mean=mean, ci95=[low, high]))  # as a careful forger would
    edit(path, lambda d: d.update(content_hash=content_hash(d)))  # and its content hash
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    assert check(root, code=0) == ["4 entries OK"]
    lines = check(root, "--against", "HEAD", code=1)
    assert lines == [f"{path}: changed since HEAD (results.per_seed); merged entries are immutable, "
                     "submit a new run under a new protocol instead"]
    # a removed entry is reported too
    entry(root, "snp").unlink()
    assert_exit(invoke("leaderboard", "render", "--root", root), 0)
    assert f"{entry(root, 'snp')}: entry removed since HEAD; merged entries are immutable" in \
        check(root, "--against", "HEAD", code=1)
    out = assert_exit(invoke("leaderboard", "check", "--root", root, "--against", "no-such-ref"), 2)
    assert "no-such-ref" in out


# --------------------------------------------------------------------------------------------
# compare RUN_DIR...
# --------------------------------------------------------------------------------------------

def test_compare_prints_the_statistics_table(runs, board):
    out = assert_exit(invoke("compare", *runs.values()), 0)
    rows = table(board)
    for method in RUNS:
        assert rows[method]["mean [95% CI]"] in out and rows[method]["Δ vs cbp [95% CI]"] in out
    assert "preliminary" in out and "IQM" in out and "squared_error, lower is better" in out


def test_compare_markdown_gives_the_same_rows_as_a_pipe_table(runs, board):
    out = assert_exit(invoke("compare", *runs.values(), "--markdown"), 0)
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| rank | method |"))
    assert lines[head + 1].startswith("|---|")
    body = [line for line in lines[head + 2:] if line.startswith("| ")]
    assert len(body) == len(RUNS)
    rows = table(board)
    for method in RUNS:
        row = next(line for line in body if f"| {method} |" in line)
        assert rows[method]["mean [95% CI]"] in row and rows[method]["Δ vs cbp [95% CI]"] in row
    assert "* mean [95% CI]:" in out and "IQM" not in out


def test_compare_without_cbp_uses_the_first_directory(runs):
    out = assert_exit(invoke("compare", runs["l2"], runs["bp"]), 0)
    assert "No cbp run among them: comparing against l2 (the first directory)" in out
    assert "Δ vs l2" in out


def test_compare_refuses_mixed_protocols_and_unfinished_runs(runs, tmp_path):
    other = Path(shutil.copytree(runs["bp"], tmp_path / "bp-other"))
    short = with_protocol(other, name="short")
    out = assert_exit(invoke("compare", runs["cbp"], other), 2)
    assert "cannot be compared" in out and f"scr/short ({short})" in out
    (other / "summary.yaml").unlink()
    assert "unfinished" in assert_exit(invoke("compare", runs["cbp"], other), 2)


# --------------------------------------------------------------------------------------------
# rank groups
# --------------------------------------------------------------------------------------------

def result(label: str, values, seeds=None) -> compare.Result:
    return compare.Result(label, dict(zip(seeds or range(len(values)), values)))


def test_ranks_share_a_group_unless_the_tests_separate_them():
    g = np.random.default_rng(0)
    best = result("best", g.normal(10.0, 0.1, 12))
    mid_a = result("mid_a", g.normal(5.0, 0.1, 12))
    mid_b = result("mid_b", g.normal(5.0, 0.1, 12))
    few = result("few", g.normal(20.0, 0.1, 9))
    rows = compare.statistics_table([mid_a, few, best, mid_b], "best", higher_is_better=True)
    assert [r.rank for r in rows] == [1, 2, 2, None]
    assert rows[0].result.label == "best" and rows[-1].result.label == "few"
    # lower is better turns the order around
    rows = compare.statistics_table([mid_a, best, mid_b], "best", higher_is_better=False)
    assert rows[0].rank == 1 and rows[-1].result.label == "best" and rows[-1].rank == 3


def test_overlapping_methods_share_rank_one():
    g = np.random.default_rng(1)
    a, b = result("a", g.normal(1.0, 1.0, 10)), result("b", g.normal(1.1, 1.0, 10))
    assert {r.rank for r in compare.statistics_table([a, b], "a", True)} == {1}


def test_the_table_reads_network_wide_diagnostics_as_icifar100_records_them():
    """icifar100 records one pooled dormant fraction and the pooled layer's rank, not per-layer values."""
    per_layer = compare.Result("a", {0: 1.0, 1: 2.0}, {"dead_fraction/layer0": {0: 0.2, 1: 0.4},
                                                       "dead_fraction/layer1": {0: 0.0, 1: 0.2},
                                                       "effective_rank/layer0": {0: 3.0, 1: 5.0}})
    pooled = compare.Result("b", {0: 1.0, 1: 2.0}, {"dormant_fraction": {0: 0.1, 1: 0.3},
                                                    "effective_rank": {0: 100.0, 1: 200.0},
                                                    "channel_effective_rank/layer0": {0: 7.0, 1: 7.0}})
    rows = {row.result.label: row for row in compare.statistics_table([per_layer, pooled], None, False)}
    assert rows["a"].dead_units == pytest.approx(0.2) and rows["a"].effective_rank == pytest.approx(4.0)
    assert rows["b"].dead_units == pytest.approx(0.2) and rows["b"].effective_rank == pytest.approx(150.0)


def test_an_entry_chosen_by_sweep_select_records_and_shows_its_tuning_budget(runs, lb, tmp_path):
    run = Path(shutil.copytree(runs["bp"], tmp_path / "bp-run"))
    write_yaml(run / "selection.yaml", {"spec": "tune", "rule": "best-mean: lowest mean over tune seeds 0-4",
                                        "tuning_budget": 3, "tune_seeds": "0-4", "report_seeds": "0-11"})
    assert_exit(invoke("leaderboard", "submit", run, "--root", lb, "--force"), 0)
    method = read_yaml(entry(lb, "bp"))["method"]
    assert method["tuning_budget"] == 3 and method["selection_rule"].startswith("best-mean")
    assert "sweep --select" in method["tuning"] and "among 3 configurations" in method["tuning"]
    assert_exit(invoke("leaderboard", "render", "--root", lb), 0)
    rows = table(lb)
    assert rows["bp"]["tuning budget"] == "3" and rows["cbp"]["tuning budget"] == "—"
    check(lb, code=0)
    edit(entry(lb, "bp"), lambda d: d["method"].update(tuning_budget=1))
    assert any("content hash mismatch: tuning differ" in line for line in check(lb, code=1))
