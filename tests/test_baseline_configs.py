"""Methods carry the image tasks' reference configs (L2, S&P) and the weight decay their docstrings claim."""

from __future__ import annotations

import sys
import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.method import RunContext
from plastibench.registry import METHODS, TASKS


def engine(overrides=None):
    cls, task = METHODS.get("l2"), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr", overrides), task, task.protocol("smoke"), [0], device=torch.device("cpu"),
                  directory=tempfile.mkdtemp(), config={})


def test_paper_baselines_carry_their_image_task_configs():
    l2, snp = METHODS.get("l2"), METHODS.get("snp")
    # lop/imagenet/cfg/l2.json; Adam's betas are the protocol's (l2 sets them only on the RL tasks)
    assert l2.hparams_for("cimagenet") == {"weight_decay": 3e-6, "lr": 0.03, "adam_betas": "protocol"}
    assert snp.hparams_for("cimagenet") == {"weight_decay": 1e-5, "perturb_scale": 1e-5}
    assert snp.hparams_for("icifar100") == {"weight_decay": 5e-4, "perturb_scale": 1e-5}
    e = engine({"lr": 0.05})
    assert e.optimizer.param_groups[0]["lr"] == 0.05 and e.optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert engine().optimizer.param_groups[0]["lr"] == 0.01  # lr 0 keeps the protocol's rate


@pytest.mark.parametrize("name", ["nap", "l2init"])
def test_methods_that_claim_no_weight_decay_turn_off_icifar100s(name):
    """Issue 11 item 14: the protocol's coupled weight decay 5e-4 is off, as the docstring says."""
    cls, proto = METHODS.get(name), TASKS.get("icifar100").protocol("paper")
    assert proto.optimizer.weight_decay == 5e-4
    method = cls(cls.hparams_for("icifar100"), RunContext(seeds=torch.tensor([0]), task="icifar100", protocol=proto))
    spec = method.optimizer_spec(proto.optimizer)
    opt = method.build_optimizer([torch.nn.Parameter(torch.zeros(1, 3))], spec)
    assert spec.weight_decay == 0.0 and all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert "``weight_decay`` to 0" in sys.modules[cls.__module__].__doc__
