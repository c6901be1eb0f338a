"""LayerNorm + weight decay (``lnwd``): LayerNorm before every hidden nonlinearity, trained with L2.

Lyle, Zheng, Khetarpal, van Hasselt, Pascanu, Martens & Dabney, "Disentangling the causes of
plasticity loss in neural networks", CoLLAs 2024 (PMLR 274:750-783, 2025; arXiv:2402.18762): layer
normalisation counters pre-activation distribution shift and weight decay counters parameter-norm
growth; together they maintained plasticity across their nonstationary benchmarks.

Rule. At every hidden nonlinearity (one per unit group) the pre-activation z[s, b] of seed s and
example b becomes

    LN(z)_j = (z_j − μ) / √(σ² + ε) · γ_j + β_j,   μ, σ² = mean and (biased) variance of z[s, b]

over the layer's n units, and for a conv map over its channels and positions (torch's LayerNorm
over (C, H, W), i.e. ``GroupNorm(1, C)``, with per-channel γ, β); γ, β are per seed ``[S, n]``,
initially 1 and 0, ε = 1e-5 (``plastibench.nn.BatchedLayerNorm``). The optimizer gets PyTorch's
coupled weight decay λ on every parameter (γ and β included): θ ← θ − α·(∇L(θ) + λ·θ) for SGD.

Where on each net (``plastibench.nn.HiddenSites``): MLP and ConvNet: z = Wx + b of each hidden
layer, LN, then the activation (and, on the ConvNet, the max-pool). ResNet-18: its BatchNorms stay
and an LN is added directly before each of the 17 ReLUs, i.e. after bn1 inside a block, after the
sum bn2(conv2(·)) + skip at a block's output (a pre-activation no BN normalises), and after the
stem's BN; BN normalises each channel over the batch, LN each example over its channels.

A re-initialised unit (CBP, ReDo) also gets γ_j = 1, β_j = 0 (its unit group's ``norm`` resets);
since μ and σ² mix all units of a layer, replacing a unit then changes the other units' outputs a
little, unlike in the base nets.

Defaults (λ): the paper's values are not verified here (its full text could not be read), so λ is
the benchmark's L2 baseline per task from the Nature reference configs, which makes lnwd − l2
the effect of the LayerNorm: ``scr`` 1e-3 (``l2``), ``pmnist`` 1e-4 (``lop/permuted_mnist/cfg/
l2.json``, plotted value), ``cimagenet`` 3e-6 (``lop/imagenet/cfg/l2.json``), ``icifar100`` 5e-4
(the base system's own decay, ``lop/incremental_cifar/cfg/base_deep_learning_system.json``).
No optimizer state is touched; nothing is reset.

Vectorizable (``plastibench.members``): λ (the optimizer applies it per member).
"""

from __future__ import annotations

from plastibench.method import NON_NEGATIVE, Method, with_weight_decay
from plastibench.nn import BatchedLayerNorm
from plastibench.registry import register_method


def add_layer_norms(net, seeds) -> None:
    """A per-seed :class:`BatchedLayerNorm` before every hidden nonlinearity of ``net``."""
    net.set_pre_norms([BatchedLayerNorm(seeds.numel(), g.n_units, device=seeds.device) for g in net.unit_groups()])


@register_method("lnwd")
class LayerNormWeightDecay(Method):
    claims = frozenset({"architecture", "weight_decay"})
    summary = "LayerNorm before every hidden nonlinearity + coupled weight decay (Lyle et al. 2024)"
    paper = ("Lyle et al., Disentangling the causes of plasticity loss in neural networks, CoLLAs 2024 "
             "(PMLR 274); arXiv:2402.18762")
    defaults = {"weight_decay": 1e-4}
    task_defaults = {"scr": {"weight_decay": 1e-3}, "pmnist": {"weight_decay": 1e-4},
                     "cimagenet": {"weight_decay": 3e-6}, "icifar100": {"weight_decay": 5e-4}}
    bounds = {"weight_decay": NON_NEGATIVE}
    vectorizable = frozenset({"weight_decay"})

    def configure_network(self, net):
        add_layer_norms(net, self.run.seeds)
        return net

    def optimizer_spec(self, spec):
        return with_weight_decay(spec, self.hp["weight_decay"])
