"""A diverging seed loses nothing: the other seeds finish exactly as without it, the diverged seed is
marked with its step, scored by the protocol's rule, and shown by summaries and compare."""

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from plastibench.cli import app
from plastibench.divergence import scored
from plastibench.engine import Engine
from plastibench.method import Method
from plastibench.registry import TASKS
from plastibench.results import read_yaml, run_config

CPU = torch.device("cpu")
SEEDS = [0, 1, 2]
POISON_STEP = 280  # inside task 1 of scr smoke (250 steps per task)


class Poisoned(Method):
    """Backprop, but seed 1's first-layer weights become NaN after global step POISON_STEP."""

    name = "poisoned"

    def after_step(self, info):
        w = self.run.net.layers[0].weight
        hit = (self.run.seeds == 1) & (info.step == POISON_STEP)
        w.data.copy_(torch.where(hit.view(-1, 1, 1), torch.full_like(w, float("nan")), w))


def _run(method_cls, tmp_path, rule="last-finite"):
    proto = dataclasses.replace(TASKS.get("scr").protocol("smoke"), diverged_score=rule)
    config = run_config("bp", {}, proto, SEEDS)
    engine = Engine(method_cls, {}, TASKS.get("scr"), proto, SEEDS, device=CPU, directory=tmp_path,
                    config=config)
    return engine, engine.run()


def test_the_other_seeds_finish_as_without_the_diverging_one(tmp_path):
    _, clean = _run(Method, tmp_path / "clean")
    engine, poisoned = _run(Poisoned, tmp_path / "poisoned")
    assert poisoned["n_diverged"] == 1
    assert poisoned["diverged"]["seeds_at_step"] == {1: POISON_STEP + 1}  # its next loss is NaN
    for seed in (0, 2):
        assert poisoned["per_seed"][seed] == clean["per_seed"][seed]
    # last-finite: seed 1's score is its task-0 error, carried forward
    task0 = engine.records[0]["squared_error"][1]
    assert np.isfinite(task0) and poisoned["per_seed"][1] == pytest.approx(task0)
    assert all(np.isnan(r["squared_error"][1]) for r in engine.records[1:])
    # diagnostics tolerate it: the diverged seed's are not measured, the others' are finite
    effective = poisoned["final_diagnostics"]["effective_rank/layer0"]["per_seed"]
    assert np.isnan(effective[1]) and np.isfinite(effective[0]) and np.isfinite(effective[2])
    # nothing non-finite is left in the network
    assert all(torch.isfinite(p).all() for p in engine.net.parameters())


def test_the_worst_rule_scores_an_error_as_infinite(tmp_path):
    _, summary = _run(Poisoned, tmp_path, rule="worst")
    assert summary["per_seed"][1] == float("inf") and np.isfinite(summary["per_seed"][0])


def test_the_rule_is_part_of_the_protocol_hash_and_the_default_keeps_old_hashes():
    proto = TASKS.get("scr").protocol("paper")
    assert proto.hash == "2821251a1f8c1646"  # the hash the leaderboard's scr entries carry
    assert dataclasses.replace(proto, diverged_score="worst").hash != proto.hash


def test_scored_carries_the_last_finite_value_forward_and_falls_back_to_the_worst():
    values = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, 4.0], [np.nan, np.nan, np.nan]])
    out = scored(values, "last-finite", higher_is_better=False)
    assert out.tolist() == [[1.0, np.inf, 3.0], [1.0, np.inf, 4.0], [1.0, np.inf, 4.0]]
    acc = scored(values, "worst", higher_is_better=True)
    assert acc[2].tolist() == [0.0, 0.0, 0.0] and acc[0].tolist() == [1.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="unknown diverged_score"):
        scored(values, "drop", True)


def test_run_compare_and_summary_say_how_many_diverged(tmp_path):
    runner = CliRunner()
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "-m", "l2", "-t", "scr", "-p", "smoke", "--seeds", "0-2", "--set",
                                 "lr=3", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 diverged" in result.output
    (run_dir,) = (out / "scr" / "smoke").iterdir()
    summary = read_yaml(run_dir / "summary.yaml")
    assert summary["n_diverged"] == 3 and len(summary["per_seed"]) == 3
    shown = runner.invoke(app, ["compare", str(run_dir)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "3 diverged" in shown.output
