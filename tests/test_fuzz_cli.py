"""Fuzzing the command line: generated option values and mutated run files never give a traceback.

Property of every example: exit status 0, 1 or 2, no "Traceback" in the output, and nothing
written outside the example's own temporary folder (the repository's leaderboard/ and runs/ are
snapshotted). Examples are cheap: one tiny scr/smoke run is made per module and only read or
copied; a `run` that would train is stopped right after the memory check.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from plastibench import runner
from plastibench.cli import app
from plastibench.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def check(result) -> None:
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def _snapshot() -> dict[str, float]:
    out = {}
    for top in ("leaderboard", "runs"):
        for path in (REPO / top).rglob("*") if (REPO / top).exists() else ():
            out[str(path)] = path.stat().st_mtime_ns
    return out


@pytest.fixture(scope="module", autouse=True)
def untouched_repo():
    before = _snapshot()
    yield
    assert _snapshot() == before, "a fuzz example wrote into the repository's leaderboard/ or runs/"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished scr/smoke bp run (2 seeds) and a leaderboard root holding its entry."""
    base = tmp_path_factory.mktemp("fuzz")
    result = invoke("run", "-m", "bp", "-t", "scr", "-p", "smoke", "--device", "cpu", "--seeds", "0-1",
                    "--out", base / "runs")
    assert result.exit_code == 0, result.output
    run_dir = next((base / "runs").glob("scr/smoke/bp-*"))
    assert invoke("leaderboard", "submit", run_dir, "--root", base / "lb").exit_code == 0
    assert invoke("leaderboard", "render", "--root", base / "lb").exit_code == 0
    return {"base": base, "run": run_dir, "lb": base / "lb"}


# ----- generated values -----

names = st.text(string.ascii_letters + string.digits + "_-+.,= ", max_size=12)
seed_text = st.one_of(
    st.text("0123456789-, x", max_size=12),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(-5, 10**7), st.integers(-5, 10**13)),
    st.sampled_from(["", ",", "0-", "-0", "0-100000", "1e9", "٣", "0--1", "  1 , 2 "]),
)
keys = st.one_of(st.sampled_from(["lr", "replacement_rate", "bp.lr", "cbp.replacement_rate", "maturity_threshold",
                                  "cbp.decay_rate", "x.y.z", "", "."]), names)
values = st.one_of(st.text(max_size=8), st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
                   st.sampled_from(["nan", "inf", "-1", "1e400", "true", "[]", "{}", "null"]))
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@FUZZ
@given(method=st.one_of(st.sampled_from(["bp", "cbp", "bp,cbp", ",", "cbp+l2", "bp+bp"]), names),
       task=st.one_of(st.just("scr"), names),  # no dataset task: a missing dataset would be downloaded
       protocol=st.one_of(st.sampled_from(["smoke", "paper"]), names),
       seeds=seed_text, sets=st.lists(st.builds(lambda k, v: f"{k}={v}", keys, values), max_size=2),
       device=st.sampled_from(["cpu", "auto", "gpu"]), capture=st.sampled_from(["off", "auto", "x"]))
def test_run_option_values(made, method, task, protocol, seeds, sets, device, capture):
    def stop(*args, **kwargs):  # the memory check ran; a valid run stops here instead of training
        real_check(*args, **kwargs)
        raise UsageError("fuzz: would train")

    real_check = runner.check_fits
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(runner, "check_fits", stop):
        args = ["run", "-m", method, "-t", task, "-p", protocol, "--seeds", seeds, "--device", device,
                "--capture", capture, "--out", Path(tmp) / "runs", "--data-dir", Path(tmp) / "data"]
        for item in sets:
            args += ["--set", item]
        check(invoke(*args))


@FUZZ
@given(seeds=seed_text, steps=st.integers(-3, 10**9), warmup=st.integers(-3, 10**9),
       baseline=st.sampled_from(["none", "loop", "x"]))
def test_bench_option_values(seeds, steps, warmup, baseline):
    from plastibench import bench
    with mock.patch.object(bench, "measure", side_effect=UsageError("fuzz: would time")), \
            mock.patch.object(bench, "measure_loop", side_effect=UsageError("fuzz: would time")):
        check(invoke("bench", "-m", "bp", "-t", "scr", "-p", "smoke", "--seeds", seeds, "--steps", steps,
                     "--warmup", warmup, "--baseline", baseline, "--device", "cpu"))


# ----- mutated files -----

def _mutate(data, draw):
    """A copy of the YAML ``data`` with one generated change: a key dropped or retyped, deep or shallow."""
    if not isinstance(data, dict) or not data:
        return draw(yaml_values)
    data = dict(data)
    key = draw(st.sampled_from(sorted(data, key=str)))
    action = draw(st.sampled_from(["drop", "replace", "deeper", "add"]))
    if action == "drop":
        del data[key]
    elif action == "replace":
        data[key] = draw(yaml_values)
    elif action == "deeper":
        data[key] = _mutate(data[key], draw)
    else:
        data[draw(st.text(max_size=5))] = draw(yaml_values)
    return data


def _write_mutation(path: Path, draw) -> None:
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "text", "bytes", "truncate"]))
    if kind == "mutate":
        path.write_text(yaml.safe_dump(_mutate(yaml.safe_load(path.read_text()), draw), allow_unicode=True))
    elif kind == "text":
        path.write_text(draw(st.text(max_size=40)))
    elif kind == "bytes":
        path.write_bytes(draw(st.binary(max_size=40)))
    else:
        text = path.read_bytes()
        path.write_bytes(text[: draw(st.integers(0, len(text)))])


def _metrics_mutation(path: Path, draw) -> None:
    lines = path.read_text().splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    fields = lines[i].split(",")
    j = draw(st.integers(0, len(fields) - 1))
    fields[j] = draw(st.sampled_from(["", "abc", "nan", "-1", "99", "1e400", "0.5"]))
    if draw(st.booleans()):
        fields = fields[:j]
    lines[i] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


RUN_FILES = ["summary.yaml", "config.yaml", "environment.yaml", "metrics.csv"]


@FUZZ
@given(data=st.data(), command=st.sampled_from(["compare", "plot", "submit", "run"]),
       files=st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True))
def test_mutated_run_files(made, data, command, files):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        run_dir = out / "scr" / "smoke" / made["run"].name
        shutil.copytree(made["run"], run_dir)
        for name in files:
            (_metrics_mutation if name == "metrics.csv" else _write_mutation)(run_dir / name, data.draw)
        if command == "compare":
            result = invoke("compare", run_dir, made["run"])
        elif command == "plot":
            result = invoke("plot", run_dir, "-o", Path(tmp) / "c.png")
        elif command == "submit":
            result = invoke("leaderboard", "submit", run_dir, "--root", Path(tmp) / "lb")
        else:  # the same command as the finished run: a cache hit that reads summary.yaml
            with mock.patch.object(runner, "Engine", side_effect=UsageError("fuzz: would train")):
                result = invoke("run", "-m", "bp", "-t", "scr", "-p", "smoke", "--device", "cpu",
                                "--seeds", "0-1", "--out", out)
        check(result)


@FUZZ
@given(data=st.data(), readme=st.booleans())
def test_mutated_leaderboard_entries(made, data, readme):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lb"
        shutil.copytree(made["lb"], root)
        entry = next((root / "entries").rglob("*.yaml"))
        _write_mutation(entry, data.draw)
        if readme:
            (root / "README.md").write_text(data.draw(st.text(max_size=60)))
        check(invoke("leaderboard", "check", "--root", root))
        check(invoke("leaderboard", "render", "--root", root))


@pytest.mark.parametrize("key, value", [("method", None), ("method", 7), ("seeds", None), ("seeds", ["a"])])
def test_a_config_without_a_method_name_or_seeds_is_damaged_not_a_crash(made, tmp_path, key, value):
    """Found by the fuzzer: ``compare`` sorted its rows by a run's method, None when config.yaml said null."""
    run_dir = tmp_path / "scr" / "smoke" / made["run"].name
    shutil.copytree(made["run"], run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, key: value}))
    result = invoke("compare", run_dir, made["run"])
    check(result)
    assert result.exit_code != 0 and "config.yaml: damaged" in result.output


def test_metrics_missing_divergence_rows_are_damaged_not_a_crash(made, tmp_path):
    """Found by the fuzzer: a metrics.csv whose diverged_at_step rows stop early made compare index past them."""
    run_dir = tmp_path / "scr" / "smoke" / made["run"].name
    shutil.copytree(made["run"], run_dir)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    cut = next(i for i, line in reversed(list(enumerate(lines))) if ",diverged_at_step," in line)
    (run_dir / "metrics.csv").write_text("\n".join(lines[:cut] + lines[cut + 1:]) + "\n")
    result = invoke("compare", run_dir, made["run"])
    check(result)
    assert result.exit_code != 0 and "diverged_at_step" in result.output
