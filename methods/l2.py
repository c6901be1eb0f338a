"""L2 regularisation (``l2``): backprop with coupled weight decay, as the reference.

Update rule: θ ← θ − α·(∇L(θ) + λ·θ), i.e. PyTorch's ``SGD(weight_decay=λ)`` (coupled L2, not
decoupled AdamW-style decay), applied to every weight and bias.

Defaults (Dohare et al. 2024 reference configs): ``pmnist`` λ = 1e-4, the value plotted in
``lop/permuted_mnist/plots/all_metrics.py`` from the sweep in ``cfg/l2.json``; ``scr`` λ = 1e-3,
**plastibench's choice**, one value of the sweep 1e-6…1 in
``lop/slowly_changing_regression/cfg/sgd/bp/relu_wd.json`` (the repository does not single out one,
and the value was not tuned here); ``cimagenet`` λ = 3e-6 with the config's own step size
0.03 instead of the protocol's 0.01 (``lop/imagenet/cfg/l2.json``; ``lr`` = 0 keeps the protocol's
rate); ``icifar100`` λ = 5e-4, the rate every CIFAR config already uses (the paper has no separate
L2 run there, so ``l2`` equals ``bp`` on that task); ``ipmnist`` λ = 1e-3 at the protocol's step
size 1e-3: UPGD's final "SGD" run there, which is this rule (``mohmdelsayed/upgd``
``core/optim/sgd.py``: θ ← θ − α·(g + λ·θ); ``experiments/statistics_input_permuted_mnist.py``,
``sgd_grid``: lr 0.001, weight_decay 0.001), the paper's SGDW.

RL (``sant``, ``ant``; ``lop/rl/cfg/*/l2.yml``, ``cbp.yml``, ``ant/redo.yml``): every configuration
with weight decay also runs Adam with β = (0.99, 0.99) instead of the protocol's (0.9, 0.999):
``adam_betas`` "0.99,0.99" there ("protocol", the default, keeps the optimizer's betas). λ = 1e-3
alone (``l2.yml``); 1e-4 composed with ``cbp`` (``cbp+l2`` is the paper's CBP agent, ``cbp.yml``)
or ``redo`` (``redo+l2`` is the reference's ReDo agent, ``ant/redo.yml``).

Vectorizable (``plastibench.members``): λ and ``lr`` may differ per member (the optimizer applies
them per member; a member's ``lr`` = 0 takes the protocol's rate, as alone).
"""

from dataclasses import replace

import torch

from plastibench.method import NON_NEGATIVE, UNIT_OPEN, HyperparameterError, Method, with_weight_decay
from plastibench.registry import register_method


def _betas(text: str) -> tuple[float, float]:
    """"b1,b2" -> (b1, b2), each in [0, 1)."""
    try:
        betas = tuple(float(b) for b in text.split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(b in UNIT_OPEN for b in betas):
        raise HyperparameterError(f"l2.adam_betas must be 'protocol' or two numbers in [0, 1) as 'b1,b2', "
                                  f"got {text!r}")
    return betas


@register_method("l2")
class L2(Method):
    claims = frozenset({"weight_decay"})
    summary = "backprop + coupled L2 weight decay (the paper's L2 baseline)"
    paper = "Dohare et al., Loss of plasticity in deep continual learning, Nature 632:768-774 (2024)"
    defaults = {"weight_decay": 1e-4, "lr": 0.0, "adam_betas": "protocol"}
    task_defaults = {"scr": {"weight_decay": 1e-3}, "pmnist": {"weight_decay": 1e-4},
                     "cimagenet": {"weight_decay": 3e-6, "lr": 0.03}, "icifar100": {"weight_decay": 5e-4},
                     "ipmnist": {"weight_decay": 1e-3},
                     **dict.fromkeys(("sant", "ant"), {"weight_decay": 1e-3, "adam_betas": "0.99,0.99"})}
    composed_task_defaults = dict.fromkeys(("cbp", "redo"), dict.fromkeys(("sant", "ant"), {"weight_decay": 1e-4}))
    bounds = {"weight_decay": NON_NEGATIVE, "lr": NON_NEGATIVE}  # lr 0: the protocol's step size
    vectorizable = frozenset({"weight_decay", "lr"})

    def __init__(self, hparams, run):
        super().__init__(hparams, run)
        self.betas = None if self.hp["adam_betas"] == "protocol" else _betas(self.hp["adam_betas"])

    def optimizer_spec(self, spec):
        spec = with_weight_decay(spec, self.hp["weight_decay"])
        if self.betas is not None:
            if spec.name != "adam":
                raise HyperparameterError(f"l2.adam_betas sets Adam's betas; this run's optimizer is {spec.name}")
            spec = replace(spec, betas=self.betas)
        lr = self.hp["lr"]
        if torch.is_tensor(lr):
            return replace(spec, lr=torch.where(lr > 0, lr, spec.lr))
        return replace(spec, lr=lr) if lr > 0 else spec
