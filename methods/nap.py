"""Normalize-and-Project (``nap``): LayerNorm before every nonlinearity, weights projected to their initial norm.

Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu & Dabney, "Normalization and effective
learning rates in reinforcement learning", NeurIPS 2024 (arXiv:2407.01800). With a normalisation
after it, a layer is invariant to the scale of its weights, so their norm growth silently decays
the effective learning rate; fixing every norm keeps that rate constant.

Rule. (1) Normalize: a per-seed LayerNorm before every hidden nonlinearity, exactly as ``lnwd``
(see ``methods/lnwd.py`` for the positions on the MLP, ConvNet and ResNet-18). (2) Project: after
every ``period``-th optimizer step (after step t when (t + 1) mod period = 0), per seed s,

    W ← W · ‖W₀‖_F / ‖W‖_F              for every weight tensor that feeds a normalisation,
    (γ, β) ← (γ, β) · ‖(γ₀, β₀)‖ / ‖(γ, β)‖   for every normalisation layer (scale and offset jointly),

with W₀, γ₀, β₀ the values right after configuration (‖(γ₀, β₀)‖ = √n for n units). Weight tensors
projected: every hidden layer's weight (MLP ``layers[:-1]``, ConvNet conv1-3 and fc1-2, every
ResNet conv including the 1x1 downsample convs, each followed by a BN); the output layer is not
followed by a normalisation, so it is projected only with ``project_output = true``. Norm layers:
the added LayerNorms and, on the ResNet, the BatchNorms' affine (γ, β) (running statistics are
not parameters and are left alone). Biases of the weight layers are not projected (the weight
matrices alone are, as in Plasticine's ``plasticine_normalize_and_project``). One factor per tensor
and seed, not per row (the shared notes' "each weight matrix"; Plasticine's
``plasticine/standard/ppo_procgen_nap.py`` ``Agent._project_weights`` takes one norm per weight
tensor; the paper's text could not be read here): a LayerNorm over all of a layer's units makes the
layer invariant to one common scale of its pre-activations, not to one scale per unit, so a per-row
projection would change the function. Scale and offset of a
norm are projected jointly, the option for homogeneous activations such as ReLU (as recorded in
``shared/reference/methods-and-streams.md`` and in Plasticine's code comment); Plasticine's code
targets √2 for every layer, the initial norm only for n = 1, so we use the actual initial norm.
Because a bias is not rescaled with its weight, a projection changes a layer's output slightly
where the bias is not 0. A tensor whose norm is 0 is left as it is; ``project_output`` does not
suit ``cimagenet``, whose head is zeroed every task: one step later the head would be blown up to
its initial norm.

Defaults: ``period`` = 1, projection after every optimizer step (our reading of the paper's
algorithm; unverified, its full text could not be read here; Plasticine projects once per
rollout), LN ε = 1e-5, no weight decay: the paper replaces weight decay by the projection, so
``optimizer_spec`` sets the protocol's coupled ``weight_decay`` to 0 (on ``icifar100`` it turns off
the protocol's 5e-4; the other streams have none). Optimizer state
(momentum, Adam moments) is neither rescaled nor reset. The initial norms are part of the method's
checkpointed state.
"""

from __future__ import annotations

import torch

from plastibench.method import AT_LEAST_ONE, Method, with_weight_decay
from plastibench.nn import BatchedLayerNorm
from plastibench.registry import register_method
from plastibench.vision import BatchedBatchNorm2d

from .lnwd import add_layer_norms


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-seed Frobenius norm of the tensors taken together, ``[S]``."""
    return torch.sqrt(sum(t.detach().flatten(1).pow(2).sum(1) for t in tensors))


@register_method("nap")
class NormalizeAndProject(Method):
    claims = frozenset({"architecture", "parameters"})
    summary = "LayerNorm before every nonlinearity + projection of each weight tensor to its initial norm"
    paper = ("Lyle et al., Normalization and effective learning rates in reinforcement learning, "
             "NeurIPS 2024; arXiv:2407.01800")
    defaults = {"period": 1, "project_output": False}
    bounds = {"period": AT_LEAST_ONE}

    def optimizer_spec(self, spec):
        """No weight decay (the projection bounds the norms): the protocol's coupled L2 is set to 0."""
        return with_weight_decay(spec, 0.0)

    def configure_network(self, net):
        add_layer_norms(net, self.run.seeds)
        output = net.unit_groups()[-1].outgoing_weight.param
        self.groups: list[list[torch.Tensor]] = [
            [w] for w in net.weight_tensors() if w is not output or self.hp["project_output"]]
        self.groups += [[m.weight, m.bias] for m in net.modules()
                        if isinstance(m, (BatchedLayerNorm, BatchedBatchNorm2d))]
        self.targets = [_norms(group) for group in self.groups]
        return net

    @torch.no_grad()
    def project(self, due: torch.Tensor | None = None) -> None:
        """Scale each tensor group back to its initial per-seed norm (where ``due``, a device bool)."""
        for group, target in zip(self.groups, self.targets):
            norm = _norms(group)
            scale = torch.where(norm > 0, target / torch.where(norm > 0, norm, 1.0), 1.0)
            if due is not None:
                scale = torch.where(due, scale, 1.0)
            for t in group:
                t.mul_(scale.view(-1, *[1] * (t.dim() - 1)))

    def after_step(self, info):
        period = self.hp["period"]
        if period == 1:
            self.project()
            return
        # a device mask from the device step (a host int, in tests of the hook, becomes a tensor)
        step = torch.as_tensor(info.step, device=self.run.seeds.device)
        self.project((step + 1) % period == 0)

    def state_dict(self):
        return {"targets": [t.clone() for t in self.targets]}

    def load_state_dict(self, state):
        for t, saved in zip(self.targets, state["targets"], strict=True):
            t.copy_(saved)
