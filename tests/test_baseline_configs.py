"""The paper's L2 and Shrink & Perturb baselines carry the reference configs of the image tasks."""

from __future__ import annotations

import tempfile

import torch

from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS


def engine(overrides=None):
    cls, task = METHODS.get("l2"), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr", overrides), task, task.protocol("smoke"), [0], device=torch.device("cpu"),
                  directory=tempfile.mkdtemp(), config={})


def test_paper_baselines_carry_their_image_task_configs():
    l2, snp = METHODS.get("l2"), METHODS.get("snp")
    assert l2.hparams_for("cimagenet") == {"weight_decay": 3e-6, "lr": 0.03}  # lop/imagenet/cfg/l2.json
    assert snp.hparams_for("cimagenet") == {"weight_decay": 1e-5, "perturb_scale": 1e-5}
    assert snp.hparams_for("icifar100") == {"weight_decay": 5e-4, "perturb_scale": 1e-5}
    e = engine({"lr": 0.05})
    assert e.optimizer.param_groups[0]["lr"] == 0.05 and e.optimizer.param_groups[0]["weight_decay"] == 1e-3
    assert engine().optimizer.param_groups[0]["lr"] == 0.01  # lr 0 keeps the protocol's rate
