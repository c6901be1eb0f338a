"""Seed-batched layers: every parameter has a leading seed axis ``[S, ...]``.

One batched model trains S independent networks in lockstep. A linear layer holds
``weight[S, out, in]`` and ``bias[S, out]`` and computes ``x[S, B, in] -> [S, B, out]`` with one
batched matmul, so a step costs about the same host time for 1 seed or 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from . import rng
from .init import gain, init_bound  # noqa: F401 (gain: vision and methods/cbp import it from here)
from .members import is_zero, per_member
from .units import InitRule, UnitGroup, UnitParam, UnitReset


def crelu(x: torch.Tensor) -> torch.Tensor:
    """Concatenated ReLU (Abbas et al. 2023) of ``x[S, B, n, *spatial]``: ``[S, B, 2n, *spatial]``.

    The two halves are interleaved per unit: unit j's ``relu(x_j)`` is channel 2j and its
    ``relu(-x_j)`` channel 2j+1, so a unit owns two consecutive inputs of the next layer
    (``UnitParam(group=2)``; a flattened conv channel owns ``2·H·W`` consecutive inputs).
    """
    return torch.stack((torch.relu(x), torch.relu(-x)), dim=3).flatten(2, 3)


ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": nn.functional.leaky_relu,
    "swish": nn.functional.silu,
    "elu": nn.functional.elu,
    "crelu": crelu,
}


def width_factor(activation: str) -> int:
    """Outputs per unit of an activation: 2 for CReLU, else 1 (the next layer's fan-in multiplier)."""
    return 2 if activation == "crelu" else 1


class _BatchedLinearFunction(torch.autograd.Function):
    """``baddbmm(b[:, None], x, W.transpose(1, 2))`` whose backward writes ``∂W`` in W's own layout.

    Through plain autograd, ``baddbmm``'s gradient for its ``W.transpose(1, 2)`` argument comes out
    as ``xᵀ·∂y`` of shape ``[S, in, out]``; its transpose does not match W's strides, so accumulating
    it into ``W.grad`` copies the whole matrix every step (on pmnist most of the step's CPU time).
    Here ``∂W = ∂yᵀ·x`` is one bmm straight into a contiguous ``[S, out, in]`` tensor,
    ``∂x = ∂y·W`` (only when x requires grad: not for a network's input) and ``∂b = Σ_B ∂y``.
    The same products as autograd's, so results agree to float rounding (bit for bit at batch 1).

    No host syncs and no value-dependent Python state: works under ``torch.compile`` and CUDA-graph
    capture. ``backward`` is made of differentiable ops on the saved inputs, so double backward
    (``create_graph=True``) works as for any composite; nothing in the benchmark needs it.

    With ``sgd`` (an SGD parameter group, no momentum, no weight decay; see
    :meth:`BatchedLinear.fuse_sgd`) the backward applies the SGD update itself, after computing ∂x
    from the old W: ``W ← W − lr·∂yᵀ·x`` as one ``baddbmm_`` and ``b ← b − lr·Σ_B ∂y``, and returns no
    gradient for W and b (the optimizer then skips them). That saves writing and re-reading a
    gradient as large as W every step; the update agrees with the optimizer's to float rounding.
    A per-member rate ``lr[S]`` (:mod:`plastibench.members`) scales ∂y per member before the product
    instead (``baddbmm_`` takes one alpha): the bias update is the optimizer's bit for bit, the
    weight's agrees with it, and with a member's own run, to float rounding.
    """

    # forward(ctx, ...) rather than a separate setup_context: the latter binds arguments through
    # inspect.signature on every call, which costs more than a small layer's matmul.
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, sgd: dict | None = None
                ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.sgd, ctx.bias = sgd, bias
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.bmm(grad_out, weight) if need_x else None
        if ctx.sgd is not None:
            with torch.no_grad():
                lr = ctx.sgd["lr"]
                if torch.is_tensor(lr):  # per member: scale ∂y by −lr before the product
                    weight.baddbmm_((grad_out * per_member(-lr, grad_out)).transpose(1, 2), x)
                    ctx.bias.addcmul_(grad_out.sum(1), per_member(-lr, ctx.bias))
                else:
                    weight.baddbmm_(grad_out.transpose(1, 2), x, alpha=-lr)
                    ctx.bias.add_(grad_out.sum(1), alpha=-lr)
            return grad_x, None, None, None
        grad_w = torch.bmm(grad_out.transpose(1, 2), x) if need_w else None
        grad_b = grad_out.sum(1) if need_b else None
        return grad_x, grad_w, grad_b, None


class BatchedLinear(nn.Module):
    """``y[s] = x[s] @ W[s].T + b[s]`` for every seed s at once.

    For a large weight the gradient of ``weight[S, out, in]`` is computed directly in that layout
    (:class:`_BatchedLinearFunction`); the values are those of ``torch.baddbmm``'s autograd. A small
    one (fewer than ``OWN_BACKWARD_MIN`` elements per seed, e.g. scr's 20-5-1 net) uses plain
    autograd, whose transposed copy costs less there than a Python-level backward.
    """

    OWN_BACKWARD_MIN = 1 << 14

    def __init__(self, n_seeds: int, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(n_seeds, out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(n_seeds, out_features, device=device))
        self.own_backward = in_features * out_features >= self.OWN_BACKWARD_MIN
        self.sgd: dict | None = None

    def fuse_sgd(self, group: dict | None) -> bool:
        """Let the backward apply plain SGD with ``group``'s rate (see :class:`_BatchedLinearFunction`);
        only for a large weight whose group has no momentum and no weight decay (a per-member
        momentum or decay, whose values differ, has some nonzero). True when it does."""
        self.sgd = group if (group is not None and self.own_backward and is_zero(group.get("momentum", 0))
                             and is_zero(group.get("weight_decay", 0))) else None
        return self.sgd is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.own_backward:
            if self.sgd is not None and torch.is_grad_enabled():
                return _BatchedLinearFunction.apply(x, self.weight, self.bias, self.sgd)
            return _BatchedLinearFunction.apply(x, self.weight, self.bias)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class BatchedLayerNorm(nn.Module):
    """LayerNorm per seed and example over one hidden layer's pre-activations ``x[S, B, n, *spatial]``.

    ``y = (x − μ) / √(σ² + eps) · γ_j + β_j``, where μ and σ² (biased) are taken over the n units and,
    for conv maps, all positions (as ``GroupNorm(1, n)``, i.e. torch's LayerNorm over ``(C, H, W)``
    with per-channel affine); ``weight`` γ and ``bias`` β are ``[S, n]``, initially 1 and 0.
    """

    def __init__(self, n_seeds: int, n_units: int, eps: float = 1e-5, device=None):
        super().__init__()
        self.n_units, self.eps = n_units, eps
        self.weight = nn.Parameter(torch.ones(n_seeds, n_units, device=device))
        self.bias = nn.Parameter(torch.zeros(n_seeds, n_units, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), keepdim=True, correction=0)
        shape = (x.shape[0], 1, self.n_units) + (1,) * (x.dim() - 3)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)

    def unit_resets(self) -> tuple[UnitReset, ...]:
        """Unit j's reset: gain 1, offset 0."""
        return (UnitReset(UnitParam(self.weight, dim=1), 1.0), UnitReset(UnitParam(self.bias, dim=1), 0.0))


class HiddenSites:
    """Extension points at every hidden nonlinearity ("site") of a seed-batched net; off by default.

    Site i is the nonlinearity of unit group i (``unit_groups()[i]``, with its ``n_units``). At site i
    the net computes ``h = post_activation(i, act(pre_norms[i](z)))`` from the pre-activation z
    (for nets with BatchNorm, z is the BN output, plus the skip at a residual join); each part is
    skipped when unset, so the default path is the plain ``act(z)``. ``pre_norms`` is a
    ``ModuleList`` (its parameters join the net's, in ``parameters()`` and ``state_dict()``);
    ``post_activation(i, h)`` is any callable (it may read the net's ``training`` flag). A norm with
    ``unit_resets()`` joins its unit group's ``norm`` resets. ``site_observer(i, h)``, when set, sees
    every site's output h (what the next layer reads, or a max-pool before it: conv maps unpooled)
    and returns nothing; it may read ``training`` and must update its own state in place.
    """

    def _init_sites(self, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        self.activation_name = activation
        self.act = ACTIVATIONS[activation]
        self.pre_norms: nn.ModuleList | None = None
        self.post_activation: Callable[[int, torch.Tensor], torch.Tensor] | None = None
        self.site_observer: Callable[[int, torch.Tensor], None] | None = None

    def set_pre_norms(self, norms: Sequence[nn.Module] | None) -> None:
        """One module per site (or None to remove them)."""
        if norms is not None and len(norms) != len(self.unit_groups()):
            raise ValueError(f"{len(norms)} norms for {len(self.unit_groups())} sites")
        self.pre_norms = None if norms is None else nn.ModuleList(norms)

    def set_post_activation(self, fn: Callable[[int, torch.Tensor], torch.Tensor] | None) -> None:
        self.post_activation = fn

    def set_site_observer(self, fn: Callable[[int, torch.Tensor], None] | None) -> None:
        self.site_observer = fn

    def activate(self, i: int, z: torch.Tensor) -> torch.Tensor:
        if self.pre_norms is not None:
            z = self.pre_norms[i](z)
        h = self.act(z)
        if self.post_activation is not None:
            h = self.post_activation(i, h)
        if self.site_observer is not None:
            self.site_observer(i, h)
        return h

    def site_resets(self, i: int) -> tuple[UnitReset, ...]:
        """The re-initialisation values of site i's pre-activation norm, if it has any."""
        norm = None if self.pre_norms is None else self.pre_norms[i]
        return norm.unit_resets() if hasattr(norm, "unit_resets") else ()


@dataclass(frozen=True)
class MLPSpec:
    """Architecture of a fully connected net: ``sizes = (in, hidden..., out)``; ``init`` "kaiming"
    (the reference's) or "default" (``torch.nn.Linear``'s own: weights and biases U(±1/√fan_in))."""

    sizes: tuple[int, ...]
    activation: str = "relu"
    init: str = "kaiming"


class BatchedMLP(HiddenSites, nn.Module):
    """A seed-batched MLP with the reference's init (``lop/nets/deep_ffnn.py``, ``ffnn.py``).

    Hidden weights ~ U(±gain(act)·√(3/fan_in)) (Kaiming-uniform), output weights ~ U(±√(3/fan_in))
    (Kaiming-uniform with linear gain), all biases 0; with ``init="default"`` every weight and bias
    ~ U(±1/√fan_in), as ``torch.nn.Linear`` (UPGD's and L2 Init's MLPs). ``forward`` returns the
    output and the list of post-activation hidden representations, which methods and diagnostics
    read. ``sizes`` count units (pre-activations); with ``crelu`` a layer after a hidden one reads
    twice its units. ``key`` names the init draws (``{key}/layer{i}``): two nets of one seed built
    with different keys get independent weights. Extension points: :class:`HiddenSites`.
    """

    def __init__(self, spec: MLPSpec, seeds: torch.Tensor, key: str = "init"):
        super().__init__()
        self.spec = spec
        self._init_sites(spec.activation)
        s, f = seeds.numel(), width_factor(spec.activation)
        self.layers = nn.ModuleList(
            BatchedLinear(s, a * (f if i else 1), b, device=seeds.device)
            for i, (a, b) in enumerate(zip(spec.sizes[:-1], spec.sizes[1:]))
        )
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                last = i == len(self.layers) - 1
                act = "linear" if last else spec.activation
                bound = init_bound(spec.init, layer.in_features, layer.out_features, act)
                layer.weight.copy_(rng.uniform(seeds, 0, f"{key}/layer{i}", tuple(layer.weight.shape[1:]),
                                               -bound, bound))
                if spec.init == "default":
                    layer.bias.copy_(rng.uniform(seeds, 0, f"{key}/layer{i}/bias", (layer.out_features,),
                                                 -bound, bound))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        *hidden, last = self.layers  # (slicing a ModuleList builds a new one every step)
        for i, layer in enumerate(hidden):
            x = self.activate(i, layer(x))
            features.append(x)
        return last(x), features

    def unit_groups(self) -> list[UnitGroup]:
        """Hidden layer i's units: rows of ``layers[i]`` in, columns of ``layers[i+1]`` out (two
        consecutive columns per unit with ``crelu``); a pre-activation norm's gain and offset."""
        return [
            UnitGroup(
                name=f"layer{i}",
                n_units=cur.out_features,
                fan_in=cur.in_features,
                activation=self.activation_name,
                incoming_weight=UnitParam(cur.weight, dim=1),
                incoming_bias=UnitParam(cur.bias, dim=1),
                outgoing_weight=UnitParam(nxt.weight, dim=2, group=nxt.in_features // cur.out_features),
                outgoing_bias=nxt.bias,
                norm=self.site_resets(i),
            )
            for i, (cur, nxt) in enumerate(zip(self.layers[:-1], self.layers[1:]))
        ]

    def unit_init(self, group: UnitGroup) -> InitRule:
        """A hidden unit's incoming weights, as initialised: U(±gain(act)·√(3/fan_in)) (Kaiming-uniform),
        or U(±1/√fan_in) with ``init="default"``."""
        return InitRule("uniform", init_bound(self.spec.init, group.fan_in, group.n_units, group.activation))

    def weight_tensors(self) -> list[torch.Tensor]:
        """The weight matrices (no biases), for weight-magnitude diagnostics."""
        return [layer.weight for layer in self.layers]
