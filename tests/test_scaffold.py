"""``plastibench new-method``: the skeleton imports, registers, passes the conformance checks; errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from plastibench import scaffold
from plastibench.cli_contrib import new_method_command, plot_command
from plastibench.method import Method
from plastibench.registry import METHODS

app = typer.Typer()
app.command("plot")(plot_command)
app.command("new-method")(new_method_command)


def new_method(*args: str):
    return CliRunner().invoke(app, ["new-method", *args], env={"COLUMNS": "250"})


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registry(monkeypatch):
    """METHODS, restored after the test: a method registered here leaves no trace."""
    METHODS.names()  # discover the in-tree methods first
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_origin", dict(METHODS._origin))
    return METHODS


@pytest.fixture(scope="module")
def conformance():
    """The conformance suite's checks (tests/test_conformance.py), to run them on the new method."""
    return load_module(Path(__file__).with_name("test_conformance.py"), "conformance_for_scaffold")


def test_skeleton_registers_and_passes_the_conformance_checks(tmp_path, registry, conformance, monkeypatch):
    result = new_method("my_method", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    path = tmp_path / "my_method.py"
    assert f"wrote {path}" in result.output and "pytest tests/test_conformance.py -k my_method" in result.output

    module = load_module(path, "scaffolded_my_method")
    cls = registry.get("my_method")
    assert cls is module.MyMethod and issubclass(cls, Method) and cls.name == "my_method"
    assert cls.summary and cls.paper and cls.defaults == {"weight_bound": 100.0}
    doc = module.__doc__
    for asked in ("Paper:", "Update rule", "Optimizer-state policy", "Defaults:", "seed axis"):
        assert asked in doc
    source = path.read_text()
    for hook in ("configure_network", "optimizer_spec", "build_optimizer", "on_task_start", "loss_term",
                 "after_step", "state_dict", "load_state_dict"):
        assert f"def {hook}(" in source, hook

    reference = conformance.train("my_method", "scr", conformance.SEEDS, tmp_path / "ref", None)
    conformance.check_finite(reference)
    conformance.check_deterministic(reference, "my_method", "scr", None, tmp_path)
    conformance.check_resume(reference, "my_method", "scr", None, tmp_path, monkeypatch)
    conformance.check_seed_alone(reference, "my_method", "scr", None, tmp_path)


def test_skeleton_hook_uses_its_hyperparameter(tmp_path, registry, conformance):
    path = scaffold.write_method("clipper", tmp_path)
    load_module(path, "scaffolded_clipper")
    engine = conformance.train("clipper", "scr", [0], tmp_path / "run", None)
    engine.method.hp["weight_bound"] = 0.25
    engine.method.after_step(None)
    # the net's init bound, √2·√(3/20) ≈ 0.55, exceeds 0.25: some weights are clipped
    assert max(p.abs().max().item() for p in engine.net.parameters()) == 0.25


def test_registry_is_clean_after_a_scaffold_test():
    assert "my_method" not in METHODS.names() and "clipper" not in METHODS.names()


@pytest.mark.parametrize("name", ["my-method", "class", "_private", "1abc", "two words", ""])
def test_invalid_names_are_refused(tmp_path, name):
    result = new_method(name, "--dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "not a valid method name" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_registered_name_is_refused(tmp_path):
    result = new_method("cbp", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "already registered" in result.output and not (tmp_path / "cbp.py").exists()


def test_existing_file_is_not_overwritten(tmp_path):
    (tmp_path / "mine.py").write_text("# my work\n")
    result = new_method("mine", "--dir", str(tmp_path))
    assert result.exit_code == 2 and "already exists" in result.output
    assert (tmp_path / "mine.py").read_text() == "# my work\n"


def test_missing_directory_is_refused(tmp_path):
    result = new_method("fresh", "--dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "no such directory" in " ".join(result.output.split())


def test_class_names():
    assert scaffold.class_name("my_method") == "MyMethod"
    assert scaffold.class_name("redo") == "Redo"
    assert scaffold.class_name("method") == "MethodMethod"  # never shadows the imported base class
