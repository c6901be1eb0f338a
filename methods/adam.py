"""Adam (``adam``): backprop with PyTorch's Adam instead of the protocol's SGD (the paper's Adam baseline).

Kingma & Ba, "Adam: A method for stochastic optimization", ICLR 2015; used as a baseline by
Dohare et al., Nature 632:768-774 (2024).

Update rule, per parameter element, every step t (``torch.optim.Adam``, no weight decay):

    m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·g²
    θ ← θ − α · (m / (1−β1^t)) / (√(v / (1−β2^t)) + ε)

Optimizer state is never reset (nothing in the network is reset). Dohare et al.'s "proper Adam"
for non-stationary RL sets β1 = β2 = 0.99 (``lop/rl/cfg/*/ns.yml``): ``--set beta1=0.99
--set beta2=0.99``.

Defaults: β = (0.9, 0.999), ε = 1e-8 (torch's, as the reference configs); ``pmnist`` α = 1e-4, the
setting plotted in ``lop/permuted_mnist/plots/all_metrics.py`` from the sweep in ``cfg/adam.json``;
``scr`` α = 1e-3, **plastibench's choice** of one value of the sweep 0.01/0.003/0.001 in
``lop/slowly_changing_regression/cfg/adam/bp/relu.json`` (the repository does not single out one;
not tuned here); ``sant`` and ``ant`` α = 1e-4, β = (0.99, 0.99): the reference's "ns" PPO
(``lop/rl/cfg/*/ns.yml``, "proper Adam"; ``bp`` on these tasks is its ``std.yml``, Adam (0.9, 0.999)).

Vectorizable (``plastibench.members``): α, β1, β2 and ε may differ per member (the optimizer
applies them per member).
"""

from dataclasses import replace

from plastibench.method import POSITIVE, UNIT_OPEN, Method
from plastibench.registry import register_method


@register_method("adam")
class Adam(Method):
    claims = frozenset({"optimizer"})
    summary = "backprop with Adam (the paper's Adam baseline; beta1 = beta2 = 0.99 for 'proper Adam')"
    paper = "Kingma & Ba, Adam, ICLR 2015; baseline of Dohare et al., Nature 632:768-774 (2024)"
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    task_defaults = {"scr": {"lr": 1e-3}, "pmnist": {"lr": 1e-4},
                     **dict.fromkeys(("sant", "ant"), {"lr": 1e-4, "beta1": 0.99, "beta2": 0.99})}
    bounds = {"lr": POSITIVE, "beta1": UNIT_OPEN, "beta2": UNIT_OPEN, "eps": POSITIVE}
    vectorizable = frozenset({"lr", "beta1", "beta2", "eps"})

    def optimizer_spec(self, spec):
        return replace(spec, name="adam", lr=self.hp["lr"], betas=(self.hp["beta1"], self.hp["beta2"]),
                       eps=self.hp["eps"], momentum=0.0)
