"""The five methods of the UPGD input-permuted MNIST reproduction (issue 13, docs/reproductions.md)
take the final settings of ``mohmdelsayed/upgd`` ``experiments/statistics_input_permuted_mnist.py``
on ``ipmnist``, restated here through each optimizer's rule."""

from __future__ import annotations

import math

from plastibench.registry import METHODS, TASKS

PROTOCOL = TASKS.get("ipmnist").protocol("paper")
# statistics_input_permuted_mnist.py: the grids of the runs behind the paper's figure
SGD = {"lr": 0.001, "weight_decay": 0.001}  # core/optim/sgd.py: θ ← θ − lr·(g + wd·θ)
SP = {"lr": 0.001, "sigma": 0.05, "decay": 0.01}  # θ ← (1 − lr·decay)·θ − lr·(g + sigma·ξ)
UPGD = {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01}


def test_sgd_and_sgdw_step_at_the_final_rate():
    assert PROTOCOL.optimizer.lr == SGD["lr"] and PROTOCOL.optimizer.weight_decay == 0.0  # bp: plain SGD
    l2 = METHODS.get("l2").hparams_for("ipmnist")
    assert l2["weight_decay"] == SGD["weight_decay"] and l2["lr"] == 0.0  # 0: the protocol's rate


def test_shrink_and_perturb_is_upgds_rule_at_its_final_settings():
    """Ours: θ ← θ − η·(g + λ·θ), then θ += N(0, σ²). UPGD's: the same with λ = decay and the noise
    −η·σ_U·ξ, i.e. σ = η·σ_U, at the same η."""
    snp = METHODS.get("snp").hparams_for("ipmnist")
    assert PROTOCOL.optimizer.lr == SP["lr"]
    assert snp["weight_decay"] == SP["decay"]
    assert math.isclose(snp["perturb_scale"], SP["lr"] * SP["sigma"], rel_tol=1e-12)


def test_upgd_and_weight_clipping_settings():
    upgd = METHODS.get("upgd").hparams_for("ipmnist")
    assert {k: upgd[k] for k in UPGD} == UPGD
    assert METHODS.get("wclip").hparams_for("ipmnist")["zeta"] == 1.0  # one of the WC repo's two final ζ
