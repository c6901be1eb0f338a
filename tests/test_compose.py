"""Compositions (``cbp+l2``): both parts act, conflicts are usage errors, namespaced hyperparameters,
exact resume and seed independence, and the command line (``run``, ``show``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.compose import Composite, CompositionError, compose
from plastibench.engine import Engine
from plastibench.errors import UsageError
from plastibench.method import HyperparameterError
from plastibench.registry import METHODS, TASKS, UnknownName
from plastibench.results import run_config
from plastibench.runner import parse_overrides

CPU = torch.device("cpu")
ACTIVE = {"cbp.replacement_rate": 0.05, "cbp.maturity_threshold": 5}  # CBP replaces units within 100 steps


@pytest.fixture(scope="module")
def conformance():
    """The conformance suite's checks (tests/test_conformance.py)."""
    spec = importlib.util.spec_from_file_location("conformance_for_compose",
                                                  Path(__file__).with_name("test_conformance.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _engine(method: str, hparams, proto, tmp_path: Path, seeds=(0, 1)) -> Engine:
    cls = METHODS.get(method)
    return Engine(cls, hparams, TASKS.get("scr"), proto, list(seeds), device=CPU, directory=tmp_path / method,
                  config=run_config(method, hparams, proto, list(seeds)))


def test_cbp_plus_l2_replaces_units_and_decays_weights(tmp_path, conformance):
    """cbp+l2 is exactly CBP trained by the protocol's SGD with L2's weight decay."""
    proto = conformance.tiny_protocol("scr")
    cls = METHODS.get("cbp+l2")
    hp = cls.hparams_for("scr", {**ACTIVE, "weight_decay": "0.01"})
    assert hp["l2.weight_decay"] == 0.01 and hp["cbp.replacement_rate"] == 0.05
    both = _engine("cbp+l2", hp, proto, tmp_path)
    assert both.optimizer.param_groups[0]["weight_decay"] == 0.01
    both.run()

    cbp_hp = METHODS.get("cbp").hparams_for("scr", {"replacement_rate": 0.05, "maturity_threshold": 5})
    decayed = dataclasses.replace(proto, optimizer=dataclasses.replace(proto.optimizer, weight_decay=0.01))
    alone = _engine("cbp", cbp_hp, decayed, tmp_path)
    alone.run()
    plain = _engine("cbp", cbp_hp, proto, tmp_path / "plain")
    plain.run()

    for name, p in both.net.state_dict().items():
        assert torch.equal(p, alone.net.state_dict()[name]), name
    assert any(not torch.equal(p, plain.net.state_dict()[n]) for n, p in both.net.state_dict().items())
    # a unit never replaced has age = steps run; a replaced one restarted from 0
    total = both.task.total_steps()
    assert any((layer["age"] < total).any() for layer in both.method.components[0].state), "CBP replaced no unit"
    assert set(both.method.state_dict()) == {"cbp", "l2"}


def test_composite_resumes_bit_identically_and_seed_alone_equals_seed_among_others(tmp_path, conformance,
                                                                                   monkeypatch):
    monkeypatch.setitem(conformance.ACTIVE, "cbp+l2", {"scr": ACTIVE})
    reference = conformance.train("cbp+l2", "scr", conformance.SEEDS, tmp_path / "ref", None)
    assert (tmp_path / "ref" / "summary.yaml").exists()
    conformance.check_finite(reference)
    conformance.check_resume(reference, "cbp+l2", "scr", None, tmp_path, monkeypatch)
    conformance.check_seed_alone(reference, "cbp+l2", "scr", None, tmp_path)


def test_composite_class_combines_the_parts():
    cls = compose("cbp+l2")
    assert issubclass(cls, Composite) and cls is METHODS.get("cbp+l2") and cls is compose(" cbp + l2 ")
    assert cls.name == "cbp+l2" and cls.claims == {"units", "weight_decay"}
    assert "cbp" in cls.summary and "l2" in cls.summary
    assert "Continual backpropagation" in cls.__doc__ and "coupled L2" in cls.__doc__
    assert cls.hparams_for("scr")["cbp.maturity_threshold"] == 10  # the part's task defaults
    assert cls.choices["cbp.utility"] == METHODS.get("cbp").choices["utility"]
    assert METHODS.in_tree("cbp+l2")


def test_the_registry_alone_answers_compositions():
    # no import of plastibench.compose: discovering the methods brings the registry its composer
    code = "from plastibench.registry import METHODS; print(METHODS.get('cbp+l2').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cbp+l2"


@pytest.mark.parametrize("name, message", [
    ("snp+l2", "cannot compose snp+l2: snp and l2 both set the optimizer's weight decay"),
    ("upgd+adam", "upgd and adam both choose the optimizer algorithm"),
    ("upgd+trac", "upgd and trac both build the optimizer"),
    ("cbp+cbp", "appears twice"),
    ("cbp+", "two or more method names"),
])
def test_conflicts_are_composition_errors(name, message):
    with pytest.raises(CompositionError, match=re.escape(message)):
        compose(name)
    assert issubclass(CompositionError, UsageError)


def test_unknown_part_suggests_close_names():
    with pytest.raises(UnknownName, match="'l2'"):
        METHODS.get("cbp+l3")


def test_hyperparameters_are_namespaced_and_unqualified_keys_must_be_unambiguous():
    cls = METHODS.get("adam+trac")
    assert cls.hparams_for("scr", {"lr": "0.01"})["adam.lr"] == 0.01          # only adam has lr
    assert cls.hparams_for("scr", {"trac.eps": "1e-6"})["trac.eps"] == 1e-6
    with pytest.raises(HyperparameterError, match="ambiguous in adam\\+trac: write adam.eps or trac.eps"):
        cls.hparams_for("scr", {"eps": "1e-6"})
    with pytest.raises(HyperparameterError, match="nosuchkey"):
        cls.hparams_for("scr", {"nosuchkey": "1"})

    out = parse_overrides(["cbp.replacement_rate=0.1", "cbp+l2.l2.weight_decay=0.5", "maturity_threshold=7"],
                          ["cbp", "cbp+l2"])
    assert out == {"cbp": {"replacement_rate": "0.1", "maturity_threshold": "7"},
                   "cbp+l2": {"cbp.replacement_rate": "0.1", "l2.weight_decay": "0.5", "maturity_threshold": "7"}}
    with pytest.raises(UsageError, match="ambiguous"):
        parse_overrides(["eps=1"], ["adam+trac"])
    with pytest.raises(UsageError, match="'snp' is not among"):
        parse_overrides(["snp.weight_decay=1"], ["cbp+l2"])


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def _clean(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", [["run", "-t", "scr", "-p", "smoke", "--device", "cpu"], ["show", "method"]])
def test_a_conflict_exits_2_with_both_names_and_the_claim(tmp_path, command):
    args = [*command, "snp+l2"] if command[0] == "show" else [*command, "-m", "bp,snp+l2", "--out", str(tmp_path)]
    text = _clean(invoke(*args), 2)
    assert "cannot compose snp+l2: snp and l2 both set the optimizer's weight decay" in text
    assert not any(tmp_path.iterdir())


def test_cli_runs_a_composite_beside_a_method_and_shows_it(tmp_path):
    text = _clean(invoke("run", "-m", "bp,cbp+l2", "-t", "scr", "-p", "smoke", "--device", "cpu", "--seeds", "0",
                         "--set", "cbp.replacement_rate=0.01", "--out", str(tmp_path)), 0)
    assert "cbp+l2" in text
    runs = sorted(p.name for p in (tmp_path / "scr" / "smoke").iterdir())
    assert [r.split("-")[0] for r in runs] == ["bp", "cbp+l2"]
    config = (tmp_path / "scr" / "smoke" / runs[1] / "config.yaml").read_text()
    assert "method: cbp+l2" in config and "cbp.replacement_rate: 0.01" in config

    shown = _clean(invoke("show", "method", "cbp+l2"), 0)
    assert "Composition cbp+l2" in shown and "=== cbp ===" in shown and "=== l2 ===" in shown
    assert "cbp.replacement_rate" in shown and "l2.weight_decay" in shown


@pytest.mark.parametrize("name", ["cbp+crelu", "crelu+cbp"])
def test_the_architecture_part_configures_the_network_first(tmp_path, tiny_imagenet32, name):
    cls, task = METHODS.get(name), TASKS.get("cimagenet")
    proto = task.protocol("smoke")
    hparams = cls.hparams_for("cimagenet", {"replacement_rate": 0.05, "maturity_threshold": 4})
    engine = Engine(cls, hparams, task, proto, [0, 1], device=CPU, directory=tmp_path,
                    config=run_config(name, hparams, proto, [0, 1]), data_dir=tiny_imagenet32, verify=False)
    cbp = next(c for c in engine.method.components if c.name == "cbp")
    # CBP's units are the CReLU network's: each conv unit owns 2 output channels of the trained net
    assert cbp.groups[0].incoming_weight.param is engine.net.conv1.weight
    assert cbp.groups[1].outgoing_weight.group == 2
    engine.run()
    assert all(torch.isfinite(p).all() for p in engine.net.parameters())
