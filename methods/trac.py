"""TRAC (``trac``): a parameter-free meta-optimizer that scales the base optimizer's distance from init.

Muppidi, Zhang & Xu, "Fast TRAC: A parameter-free optimizer for lifelong reinforcement learning",
NeurIPS 2024 (arXiv:2405.16642). Restated from the official code (``ComputationalRobotics/TRAC``,
``package/src/trac_optimizer/trac.py``, ``_step`` and ``start_trac``, commit dab0076), which
follows the mechanic meta-optimizer of Cutkosky, Defazio & Mehta (2023).

The protocol's optimizer (after any other method's changes, e.g. ``adam+trac``) is the *base*.
TRAC keeps the reference point θ_ref = the parameters before the first step and a scale
S = Σ_j s_j ≥ 0, and the parameters are always θ = θ_ref + S·Δ. Every step t, per seed (g the
gradient at θ_t, u_t the base optimizer's update computed at θ_t, sums over every element of
every parameter of that seed's network):

    Δ_t  = (θ_t − θ_ref) / (S_t + ε)          (S_t the unclipped Σ_j s_j; Δ_0 = 0)
    h    = Σ ⟨Δ_t, g⟩
    Δ    ← Δ_t + u_t
    for each β_j in (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999):
        v_j ← β_j²·v_j + h²;     σ_j ← β_j·σ_j − h
        s_j = s_prev / erfi(1/√2) · erfi( σ_j / (√2·√v_j + ε) )          (the "erfi tuner")
    θ_{t+1} = θ_ref + max(Σ_j s_j, 0) · Δ

with s_j = 0, v_j = 0, σ_j = 1e-8 initially, s_prev = 1e-8 and ε = 1e-8. With S held fixed at 1
this is exactly the base optimizer; with S fixed at c it is the base optimizer whose every update is
scaled by c.

Pinned here:

* The inner product h runs over every parameter that has a gradient, as the code's global h, but
  per seed: each seed has its own θ_ref, s, v and σ, so seeds stay independent.
* The state is float32 as the code's (``torch.tensor(betas)`` included); erfi is computed in
  float64 (torch has none) as erfi(x) = 2/√π·e^{x²}·D(x), with Dawson's integral D by Rybicki's
  method (h = 0.2, 17 terms) and its Taylor series below |x| = 0.2, then rounded to float32. The
  code's erfi is Weideman's complex-erf approximation in complex64; both agree to float32 precision.
  Like the code, erfi overflows to inf for very large arguments; the code then raises on NaN, while
  we do not synchronise with the host inside a step, so such a run shows non-finite values.
* The code logs S every step and checks for NaN (host syncs); we do neither.
* A consequence of the code's rule, kept: once Σ_j s_j ≤ 0 the parameters sit at θ_ref, so Δ reads
  back as 0, h = 0 and v, σ only decay; s_j keeps the sign of σ_j, and a seed whose scale stays
  ≤ 0 stays at its initialisation (seen on ``scr`` smoke with the protocol's SGD for 1 seed of 3).

Optimizer-state policy: the base optimizer's state (momentum, Adam moments) is kept and
checkpointed as usual; TRAC's θ_ref, s, v and σ are checkpointed beside it under the key
``"trac"``. Nothing is reset at task boundaries (TRAC needs no boundaries). A method that edits
parameters between steps (e.g. ``cbp+trac``) edits θ; TRAC then reads the edit back into Δ at the
next step, as the code would.

Defaults: none to tune (the paper's point); ``s_prev`` and ``eps`` are the code's 1e-8 on every
task.

Vectorizable (``plastibench.members``): ``s_prev`` and ``eps`` (per member: its tuners' scale
s_prev/erfi(1/√2), computed in float64 as for a number, and its ε).
"""

from __future__ import annotations

import math

import torch

from plastibench.members import per_member
from plastibench.method import POSITIVE, Method, make_optimizer
from plastibench.registry import register_method

BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)

_H = 0.2  # Rybicki's sampling step; the discretisation error is ~exp(-(π/2h)²) ≈ 1e-27
_ODD = 2 * torch.arange(17, dtype=torch.float64) + 1  # 1, 3, ..., 33: the terms kept around n0
_TAYLOR_TERMS = 12


def dawson(x: torch.Tensor) -> torch.Tensor:
    """Dawson's integral D(x) = e^{−x²}∫₀ˣ e^{t²} dt, element-wise, in float64."""
    x = x.double()
    ax = x.abs()
    # |x| < 0.2: D(x) = x·Σ_n (−2x²)^n / (2n+1)!!, by Horner
    x2 = ax * ax
    acc = torch.ones_like(ax)
    for n in range(_TAYLOR_TERMS, 0, -1):
        acc = 1 - (2 * x2 / (2 * n + 1)) * acc
    small = ax * acc
    # Rybicki: D(x) ≈ π^{-1/2} Σ_{n odd} e^{−(x−nh)²}/n, summed around the nearest even n0
    odd = _ODD.to(x.device)
    n0 = 2 * torch.floor(0.5 * ax / _H + 0.5)
    xp = ax - n0 * _H
    e = torch.exp((2 * _H) * odd * xp.unsqueeze(-1))
    n0 = n0.unsqueeze(-1)
    terms = torch.exp(-(odd * _H) ** 2) * (e / (n0 + odd) + 1 / ((n0 - odd) * e))
    large = torch.exp(-xp * xp) * terms.sum(-1) / math.sqrt(math.pi)
    return torch.sign(x) * torch.where(ax < 0.2, small, large)


def erfi(x: torch.Tensor) -> torch.Tensor:
    """The imaginary error function erfi(x) = −i·erf(ix) = 2/√π·∫₀ˣ e^{t²} dt, in ``x``'s dtype."""
    xd = x.double()
    return (2 / math.sqrt(math.pi) * torch.exp(xd * xd) * dawson(xd)).to(x.dtype)


class TRACOptimizer(torch.optim.Optimizer):
    """TRAC around ``base`` for seed-batched parameters ``[S, ...]``; shares the base's groups and state."""

    def __init__(self, base: torch.optim.Optimizer, seeds: torch.Tensor, betas=BETAS, s_prev: float = 1e-8,
                 eps: float = 1e-8):
        self.base = base
        super().__init__([p for group in base.param_groups for p in group["params"]], {})
        self._share()
        self.seeds = seeds
        self.eps = eps
        device = seeds.device
        self.betas = torch.tensor(betas, dtype=torch.float32, device=device)
        one_over_sqrt2 = torch.tensor(1.0 / math.sqrt(2.0), dtype=torch.float64)
        self.f_term = torch.as_tensor(s_prev, dtype=torch.float64) / erfi(one_over_sqrt2)  # [S] per member
        self.f_term = self.f_term.to(torch.float32).to(device)
        self.trac: dict = {}

    def _share(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _init(self, before: dict[int, torch.Tensor], params: list[torch.Tensor]) -> None:
        s, k = self.seeds.numel(), self.betas.numel()
        dev = self.seeds.device
        self.trac = {
            "ref": [before[i].clone() if i in before else p.detach().clone() for i, p in enumerate(params)],
            "s": torch.zeros(s, k, device=dev),
            "variance": torch.zeros(s, k, device=dev),
            "sigma": torch.full((s, k), 1e-8, device=dev),
        }

    def tune(self, h: torch.Tensor) -> torch.Tensor:
        """The erfi tuner: update v and σ with the per-seed ``h[S]`` and return the new s ``[S, K]``."""
        t = self.trac
        dtype = t["variance"].dtype  # float32 whatever the parameters' dtype, as the code's 0-dim h
        t["variance"].copy_(t["variance"] * self.betas ** 2 + (h * h).to(dtype).unsqueeze(1))
        t["sigma"].copy_(t["sigma"] * self.betas - h.to(dtype).unsqueeze(1))
        spread = math.sqrt(2.0) * torch.sqrt(t["variance"]) + per_member(self.eps, t["variance"])
        return per_member(self.f_term, spread) * erfi(t["sigma"] / spread)

    @staticmethod
    def _per_seed(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *([1] * (like.dim() - 1)))

    def step(self, closure=None):
        params = self._params()
        with torch.no_grad():
            live = [i for i, p in enumerate(params) if p.grad is not None]
            before = {i: params[i].detach().clone() for i in live}
            grads = {i: params[i].grad.detach().clone() for i in live}
        loss = self.base.step(closure)
        with torch.no_grad():
            if "ref" not in self.trac:
                self._init(before, params)
            t = self.trac
            total = t["s"].sum(1)
            denominator = total + per_member(self.eps, total)
            h = torch.zeros(self.seeds.numel(), dtype=params[live[0]].dtype if live else None,
                            device=self.seeds.device)
            deltas = {}
            for i in live:
                p, theta, ref = params[i], before[i], t["ref"][i]
                delta = (theta - ref) / self._per_seed(denominator, p)
                h = h + (delta * grads[i]).flatten(1).sum(1)
                deltas[i] = delta.add_(p - theta)
            t["s"].copy_(self.tune(h))
            scale = t["s"].sum(1).clamp_min(0)
            for i in live:
                params[i].copy_(t["ref"][i] + deltas[i] * self._per_seed(scale, params[i]))
        return loss

    def state_dict(self):
        state = self.base.state_dict()
        state["trac"] = {key: ([r.clone() for r in value] if key == "ref" else
                               value.clone() if torch.is_tensor(value) else value)
                         for key, value in self.trac.items()}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        trac = state_dict.pop("trac", {})
        self.base.load_state_dict(state_dict)
        self._share()
        dev = self.seeds.device
        self.trac = {key: ([r.clone().to(dev) for r in value] if key == "ref" else
                           value.clone().to(dev) if torch.is_tensor(value) else value)
                     for key, value in trac.items()}


@register_method("trac")
class TRAC(Method):
    claims = frozenset({"parameters"})
    summary = "parameter-free meta-optimizer: theta = theta_init + S*(base optimizer's displacement), S by erfi tuners"
    paper = ("Muppidi, Zhang & Xu, Fast TRAC: A parameter-free optimizer for lifelong reinforcement "
             "learning, NeurIPS 2024")
    defaults = {"s_prev": 1e-8, "eps": 1e-8}
    bounds = {"s_prev": POSITIVE, "eps": POSITIVE}  # s_prev = 0 would pin every s_j, so θ, at θ_ref
    vectorizable = frozenset({"s_prev", "eps"})

    def build_optimizer(self, params, spec):
        return TRACOptimizer(make_optimizer(params, spec), self.run.seeds, s_prev=self.hp["s_prev"],
                             eps=self.hp["eps"])
