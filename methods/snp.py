"""Shrink & Perturb (``snp``) in the Nature paper's per-step form.

Update rule, every step: θ ← θ − α·(∇L(θ) + λ·θ)  (shrink: coupled weight decay in the optimizer),
then θ ← θ + ε with ε ~ N(0, σ²) drawn independently for every weight and bias of every layer,
output layer included (``lop/algos/bp.py::Backprop.perturb``). This differs from Ash & Adams
(2020), who shrink and perturb once at each task boundary.

Defaults (reference configs): ``pmnist`` λ = 1e-4, σ = 1e-5 (``cfg/snp.json``, setting plotted in
``plots/all_metrics.py``); ``scr`` λ = 1e-2 (``cfg/sgd/bp/relu_snp.json``), σ = 1e-4, **plastibench's
choice** of one value of that file's sweep 1e-6…1e-1 (the repository does not single out one; not
tuned here); ``cimagenet`` λ = 1e-5, σ = 1e-5 (``lop/imagenet/cfg/snp.json``);
``icifar100`` λ = 5e-4 (every CIFAR config's rate), σ = 1e-5 on all parameters, BatchNorm's included
(``cfg/shrink_and_perturb.json``, ``inject_noise``). ``lpemnist`` and ``lpcifar10``: UPGD's final
S&P runs on them (``mohmdelsayed/upgd`` ``experiments/statistics_output_permuted_emnist.py`` and
``..._cifar10.py`` l.59-66, ``sp_grid``: step size η = 0.01, ``decay`` 1e-3, ``sigma`` 5e-3), whose
rule θ ← (1 − η·decay)·θ − η·(g + σ_U·ξ) (``core/optim/shrink_and_perturb.py``) is this one with
λ = decay = 1e-3 and σ = η·σ_U = 5e-5 at the protocols' step size η = 0.01. ``ipmnist``: UPGD's
final S&P run on input-permuted MNIST (``experiments/statistics_input_permuted_mnist.py``,
``sp_grid``: η = 0.001, ``decay`` 0.01, ``sigma`` 0.05), by the same rule λ = 1e-2 and
σ = η·σ_U = 5e-5 at the protocol's η = 0.001.

Vectorizable (``plastibench.members``): λ (the optimizer's, per member) and σ (``rng.normal``
scales each member's draws by its own σ).
"""

import torch

from plastibench import rng
from plastibench.method import NON_NEGATIVE, Method, with_weight_decay
from plastibench.registry import register_method


@register_method("snp")
class ShrinkAndPerturb(Method):
    claims = frozenset({"weight_decay"})
    summary = "shrink (coupled weight decay) + Gaussian noise on every parameter after each step"
    paper = ("Ash & Adams, On warm-starting neural network training, NeurIPS 2020; per-step form of "
             "Dohare et al., Nature 632:768-774 (2024)")
    defaults = {"weight_decay": 1e-4, "perturb_scale": 1e-5}
    task_defaults = {"scr": {"weight_decay": 1e-2, "perturb_scale": 1e-4},
                     "pmnist": {"weight_decay": 1e-4, "perturb_scale": 1e-5},
                     "cimagenet": {"weight_decay": 1e-5, "perturb_scale": 1e-5},
                     "icifar100": {"weight_decay": 5e-4, "perturb_scale": 1e-5},
                     "lpemnist": {"weight_decay": 1e-3, "perturb_scale": 5e-5},
                     "lpcifar10": {"weight_decay": 1e-3, "perturb_scale": 5e-5},
                     "ipmnist": {"weight_decay": 1e-2, "perturb_scale": 5e-5}}
    bounds = {"weight_decay": NON_NEGATIVE, "perturb_scale": NON_NEGATIVE}  # σ = 0: no noise
    vectorizable = frozenset({"weight_decay", "perturb_scale"})

    def optimizer_spec(self, spec):
        return with_weight_decay(spec, self.hp["weight_decay"])

    def configure_network(self, net):
        self.noise = [(p, rng.Block(self.run.seeds, f"snp/{name}", tuple(p.shape[1:]), rng.normal,
                                    std=self.hp["perturb_scale"]))
                      for name, p in net.named_parameters()]
        return net

    @torch.no_grad()
    def after_step(self, info):
        for p, noise in self.noise:
            p.add_(noise.at(info.step))
