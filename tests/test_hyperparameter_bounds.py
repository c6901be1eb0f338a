"""Hyperparameters are validated, not just typed: every numeric one has a declared range
(``Method.bounds``), values outside it and NaN/inf are refused with one line, on the command line
as a usage error (exit status 2, no traceback)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from plastibench import scaffold
from plastibench.cli import app
from plastibench.compose import compose
from plastibench.method import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, UNIT_OPEN, HyperparameterError,
                                Method, Range)
from plastibench.registry import METHODS

WIDE = {"COLUMNS": "250"}


def run(out: Path, method: str, *sets: str):
    args = ["run", "--method", method, "--task", "scr", "--protocol", "smoke", "--device", "cpu",
            "--seeds", "0", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args, env=WIDE)


# --------------------------------------------------------------------------------------------
# the command line: one line, exit 2
# --------------------------------------------------------------------------------------------

REFUSED = [
    ("cbp", "replacement_rate=-1", "replacement_rate", "[0, 1]"),
    ("cbp", "replacement_rate=2", "replacement_rate", "[0, 1]"),
    ("cbp", "maturity_threshold=-5", "maturity_threshold", ">= 0"),
    ("cbp", "decay_rate=1", "decay_rate", "[0, 1)"),
    ("cbp", "replacement_rate=nan", "replacement_rate", "[0, 1]"),
    ("cbp", "replacement_rate=inf", "replacement_rate", "[0, 1]"),
    ("cbp", "replacement_rate=-inf", "replacement_rate", "[0, 1]"),
    ("adam", "lr=-0.01", "lr", "> 0"),
    ("adam", "beta1=1.5", "beta1", "[0, 1)"),
    ("cbp+l2", "cbp.replacement_rate=2", "cbp.replacement_rate", "[0, 1]"),
    ("cbp+l2", "replacement_rate=nan", "cbp.replacement_rate", "[0, 1]"),
    ("cbp+l2", "weight_decay=-1", "l2.weight_decay", ">= 0"),
]


@pytest.mark.parametrize("method, setting, key, bound", REFUSED, ids=[f"{m}:{s}" for m, s, _, _ in REFUSED])
def test_out_of_range_or_non_finite_value_is_a_one_line_usage_error(tmp_path, method, setting, key, bound):
    out = tmp_path / "runs"
    result = run(out, method, setting)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("Error: ") and f"{method}: {key}=" in line and bound in line, line
    assert ("not a finite number" if "inf" in setting or "nan" in setting else "out of range") in line
    assert not out.exists()  # refused before anything was written


def test_message_names_method_key_value_and_range():
    with pytest.raises(HyperparameterError) as info:
        METHODS.get("cbp").hparams_for("scr", {"replacement_rate": "-1"})
    assert str(info.value) == "cbp: replacement_rate=-1.0 is out of range; it must be in [0, 1]"


@pytest.mark.parametrize("method, settings", [
    ("cbp", ("replacement_rate=0", "decay_rate=0", "maturity_threshold=0")),
    ("cbp", ("replacement_rate=1",)),
    ("adam", ("beta1=0", "beta2=0")),
])
def test_boundary_values_inside_the_range_are_accepted(tmp_path, method, settings):
    out = tmp_path / "runs"
    result = run(out, method, *settings)
    assert result.exit_code == 0, result.output
    (config,) = out.glob("scr/smoke/*/config.yaml")
    hp = yaml.safe_load(config.read_text())["hparams"]
    for setting in settings:
        key, _, value = setting.partition("=")
        assert hp[key] == float(value)


def test_show_method_prints_the_ranges():
    result = CliRunner().invoke(app, ["show", "method", "cbp"], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.output.splitlines() if line.strip().startswith("│") and line.count("│") > 3}
    assert rows["replacement_rate"] == "[0, 1]" and rows["decay_rate"] == "[0, 1)"
    assert rows["maturity_threshold"] == ">= 0" and rows["utility"] == ""


# --------------------------------------------------------------------------------------------
# Range and the check itself
# --------------------------------------------------------------------------------------------

def test_range_text_and_membership():
    assert (str(UNIT), str(UNIT_OPEN), str(POSITIVE), str(NON_NEGATIVE), str(AT_LEAST_ONE)) == \
        ("[0, 1]", "[0, 1)", "> 0", ">= 0", ">= 1")
    assert str(Range(0, 1, low_open=True)) == "(0, 1]" and str(Range(high=1e-3, high_open=True)) == "< 0.001"
    assert 0 in UNIT and 1 in UNIT and 1 not in UNIT_OPEN and 0 not in POSITIVE and 0 in NON_NEGATIVE
    for bad in (math.nan, math.inf, -math.inf):
        assert bad not in Range()


def test_nan_is_refused_even_without_a_bound():
    class Free(Method):
        name = "free"
        defaults = {"x": 1.0, "flag": True}
    assert Free.hparams_for("scr", {"x": "-1e9"})["x"] == -1e9
    with pytest.raises(HyperparameterError, match="free: x=nan is not a finite number"):
        Free.hparams_for("scr", {"x": "nan"})


def test_configured_directly_out_of_range_is_refused_too():
    with pytest.raises(HyperparameterError, match=r"dropout: p=1.0 is out of range; it must be in \[0, 1\)"):
        METHODS.get("dropout")({"p": 1.0}, None)


def test_compositions_validate_through_their_parts_bounds():
    cls = compose("cbp+l2")
    assert cls.bounds["cbp.replacement_rate"] == METHODS.get("cbp").bounds["replacement_rate"]
    assert cls.bounds["l2.weight_decay"] == METHODS.get("l2").bounds["weight_decay"]
    with pytest.raises(HyperparameterError, match=r"cbp\+l2: cbp.decay_rate=1.0 is out of range"):
        cls.hparams_for("scr", {"decay_rate": "1"})


def test_scaffold_declares_bounds():
    assert 'bounds = {"weight_bound": POSITIVE}' in scaffold.render("my_method")


# --------------------------------------------------------------------------------------------
# registry-wide: every numeric hyperparameter has a range, every default lies inside it
# --------------------------------------------------------------------------------------------

def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_numeric_hyperparameter_has_a_bound(name):
    cls = METHODS.get(name)
    values = {**cls.defaults, **{k: v for t in cls.task_defaults.values() for k, v in t.items()}}
    missing = sorted(k for k, v in values.items() if numeric(v) and k not in cls.bounds)
    assert not missing, (
        f"method {name!r} ({cls.__module__}) declares no range for {', '.join(missing)}: add e.g. "
        f"bounds = {{{', '.join(repr(k) + ': NON_NEGATIVE' for k in missing)}}} to its class "
        "(UNIT, UNIT_OPEN, POSITIVE, NON_NEGATIVE, AT_LEAST_ONE or Range(low, high, low_open, high_open) "
        "from plastibench.method; see CONTRIBUTING.md)")
    unknown = sorted(set(cls.bounds) - cls.hparameter_names())
    assert not unknown, f"method {name!r} declares bounds for {unknown}, which are not its hyperparameters"
    wrong = sorted(k for k, v in cls.bounds.items() if not isinstance(v, Range))
    assert not wrong, f"method {name!r}: bounds of {wrong} must be plastibench.method.Range values"


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_and_task_defaults_lie_within_the_bounds(name):
    cls = METHODS.get(name)
    for task in ["(any)", *cls.task_defaults]:
        values = {**cls.defaults, **cls.task_defaults.get(task, {})}
        for key, value in values.items():
            if numeric(value) and key in cls.bounds:
                assert value in cls.bounds[key], (f"{name} ({task}): default {key}={value!r} lies outside "
                                                  f"its declared range {cls.bounds[key]}")
        cls.hparams_for(task)  # and the method's own check agrees
