"""scr with ``task.rng=reference``: runs drawn as the reference code draws them after manual seeds.

The expected numbers below were produced by running the reference code itself
(``shibhansh/loss-of-plasticity`` at 63c35f3, outside this repository): ``torch.manual_seed(1000 + s)``
then ``slowly_changing_regression.generate_problem_data`` with ``cfg/prob.json``'s settings, then
``torch.manual_seed(s)`` and ``expr.expr`` with ``cfg/sgd/bp/relu.json`` (step size 0.01).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from typer.testing import CliRunner

from plastibench.cli import app

from plastibench.engine import Engine
from plastibench.leaderboard import LeaderboardError, entry_from_run
from plastibench.registry import METHODS, TASKS
from plastibench.results import run_config

CPU = torch.device("cpu")
SCR = TASKS.get("scr")

# The reference code's mean squared error over the first 10 000 examples of runs 0-4 (bp, relu, SGD 0.01).
FIRST_PERIOD = {0: 0.4385837358494644, 1: 0.5038370806201988, 2: 2.6961446718125197, 3: 0.4225179688804309,
                4: 0.7181007448712832}
# Run 0's data: its target output summed over the first 10 000 examples; period 99's slow bits, and
# its first example's fast bits and target (row 990 000 of the reference's X and Y).
FIRST_TARGET_SUM_RUN0 = -4016.0
SLOW_BITS_PERIOD99_RUN0 = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
ROW_990000_RUN0 = ([1.0, 1.0, 0.0, 1.0, 1.0], 0.0)


def smoke_run(out, *extra: str):
    return CliRunner().invoke(app, ["run", "-m", "bp", "-t", "scr", "-p", "smoke", "--device", "cpu", "--out",
                                    str(out), *extra], env={"COLUMNS": "250"})


def assert_clean_exit(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return " ".join(result.output.split())


def reference_protocol(n_tasks: int = 1):
    return dataclasses.replace(SCR.with_options(SCR.protocol("paper"), {"rng": "reference"}), n_tasks=n_tasks)


def test_reference_data_are_the_reference_generators():
    task = SCR(reference_protocol(), torch.tensor([0]))
    task.start_task(0)
    assert float(task.y[0].sum()) == FIRST_TARGET_SUM_RUN0
    assert task.reference.slow[0, 99].tolist() == SLOW_BITS_PERIOD99_RUN0
    assert set(task.x.unique().tolist()) == {0.0, 1.0}
    task.start_task(99)  # a jump: the fast bits of periods 1-98 are drawn and dropped
    assert task.x[0, 0, :15].tolist() == SLOW_BITS_PERIOD99_RUN0
    assert (task.x[0, 0, 15:].tolist(), float(task.y[0, 0, 0])) == ROW_990000_RUN0


def test_bp_reproduces_the_reference_codes_first_period_per_seed(tmp_path):
    """The engine's bp, seeds 0-4 batched, against the reference code's own runs 0-4."""
    proto, seeds = reference_protocol(1), [0, 1, 2, 3, 4]
    cls = METHODS.get("bp")
    engine = Engine(cls, {}, SCR, proto, seeds, device=CPU, directory=tmp_path,
                    config=run_config("bp", {}, proto, seeds))
    per_seed = engine.run()["per_seed"]
    for s in seeds:
        assert per_seed[s] == pytest.approx(FIRST_PERIOD[s], rel=1e-4), s


def test_a_period_drawn_after_a_jump_equals_the_one_drawn_in_order():
    """Resuming at period p redraws the fast bits from the start: the same rows as an unbroken run."""
    proto = dataclasses.replace(reference_protocol(4), steps_per_task=50)
    in_order = SCR(proto, torch.tensor([3, 7]))
    for p in range(3):
        in_order.start_task(p)
    jumped = SCR(proto, torch.tensor([3, 7]))
    jumped.start_task(2)
    assert torch.equal(in_order.x, jumped.x) and torch.equal(in_order.y, jumped.y)
    fresh = SCR(proto, torch.tensor([3]))
    fresh.start_task(2)
    assert torch.equal(fresh.x[0], in_order.x[0])  # seed 3 does not depend on seed 7 beside it


def test_the_learner_starts_from_ffnns_init_of_each_seed():
    task = SCR(reference_protocol(), torch.tensor([0, 5]))
    net = task.network()
    for i, s in enumerate((0, 5)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)  # FFNN(20, 5): both nn.Linear built, then the Kaiming re-draws
            first, last = torch.nn.Linear(20, 5), torch.nn.Linear(5, 1)
            torch.nn.init.kaiming_uniform_(first.weight, nonlinearity="relu")
            torch.nn.init.kaiming_uniform_(last.weight, nonlinearity="linear")
        assert torch.equal(net.layers[0].weight[i], first.weight.detach())
        assert torch.equal(net.layers[1].weight[i], last.weight.detach())
        assert not net.layers[0].bias[i].any() and not net.layers[1].bias[i].any()


def test_a_reshaping_method_is_refused_with_the_reason():
    task = SCR(dataclasses.replace(reference_protocol(), settings={**reference_protocol().settings,
                                                                    "activation": "crelu"}), torch.tensor([0]))
    with pytest.raises(ValueError, match="task.rng=reference draws the reference's FFNN"):
        task.network()


def test_the_option_is_hashed_and_recorded_and_the_default_keeps_the_protocol(tmp_path):
    assert_clean_exit(smoke_run(tmp_path / "a"), 0)
    assert_clean_exit(smoke_run(tmp_path / "a", "--set", "task.rng=plastibench"), 0)
    assert_clean_exit(smoke_run(tmp_path / "a", "--set", "task.rng=reference"), 0)
    runs = sorted((tmp_path / "a" / "scr" / "smoke").iterdir())
    assert len(runs) == 2  # rng=plastibench is the registered protocol: its run was read, not redone
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in runs]
    chosen = [c for c in configs if "task_options" in c]
    assert len(chosen) == 1 and chosen[0]["task_options"] == {"rng": "reference"}
    plain = next(c for c in configs if "task_options" not in c)
    assert plain["protocol_hash"] == SCR.protocol("smoke").hash != chosen[0]["protocol_hash"]
    assert chosen[0]["protocol_spec"]["settings"]["rng"] == "reference"
    ref_dir = runs[configs.index(chosen[0])]
    with pytest.raises(LeaderboardError, match="task options"):
        entry_from_run(ref_dir)


@pytest.mark.parametrize("item, message", [
    ("task.rng=numpy", "task option rng='numpy': choose one of plastibench, reference"),
    ("task.seed=3", "task 'scr' has no option 'seed' (its options: boundaries, rng, transition)"),
    ("task.rng", "write task.KEY=VALUE"),
])
def test_a_bad_task_option_is_a_usage_error(tmp_path, item, message):
    text = assert_clean_exit(smoke_run(tmp_path / "runs", "--set", item), 2)
    assert message in text
    assert not (tmp_path / "runs").exists()


def test_a_configuration_refused_at_build_is_a_usage_error_and_leaves_no_run(tmp_path):
    result = CliRunner().invoke(app, ["run", "-m", "cbp+upgd", "-t", "scr", "-p", "smoke", "--device", "cpu",
                                      "--out", str(tmp_path / "runs"), "--set", "cbp.optimizer=adamgnt"])
    text = assert_clean_exit(result, 2)
    assert text.startswith("Error: cbp+upgd on scr/smoke:") and "Traceback" not in text
    assert not list((tmp_path / "runs").rglob("cbp+upgd-*"))
