"""Utility-based perturbed gradient descent (``upgd``): protect useful weights, perturb the others.

Elsayed & Mahmood, "Addressing loss of plasticity and catastrophic forgetting in continual
learning", ICLR 2024 (arXiv:2404.00781). Restated from the official code
(``mohmdelsayed/upgd``, ``core/optim/weight_upgd/first_order.py::FirstOrderGlobalUPGD``, the
"UPGD-W" learner ``upgd_fo_global`` of the paper's experiments). It replaces the protocol's
optimizer.

Update rule, every step t, for every weight or bias element θ with gradient g (all per seed):

    u  ← β·u + (1−β)·(−g·θ)                    first-order utility trace, θ before the step
    M  = max u over every element of every parameter of this seed's network   ("global" max)
    ū  = sigmoid( (u / (1−β^t)) / M )            scaled utility in (0, 1)
    θ  ← (1 − η·λ)·θ − η·(g + σ·ξ)·(1 − ū),      ξ ~ N(0, 1) per element and step

A weight of high utility (ū → 1) is left nearly untouched (no gradient step, no noise); a weight of
low utility (ū → 0) takes the full gradient step plus noise. Weight decay λ acts on every
parameter, biases included.

Pinned where sources disagree:

* The step is η, as the code that produced the paper's numbers; the README's snippet steps by 2η
  (``alpha=-2.0*lr``).
* The max M is taken over the *uncorrected* traces u while the numerator is bias-corrected,
  exactly as the code. The max is per seed, over that seed's parameters only, so seeds stay
  independent; the code's network is one seed.
* Where every trace of a seed is 0 (e.g. all gradients zero on the first step) the code divides
  0 by 0 and writes NaN into the weights; we take that ratio as 0 (ū = ½). Everywhere the code is
  finite this is the code's value.
* ξ comes from ``plastibench.rng`` keyed by (seed, t, parameter name), not from torch's global
  generator: seed k alone equals seed k beside others, and resume is exact. In a run, t is the
  run's device clock plus one (``run.clock.step + 1``, read from the prepared ``rng.Block``), which
  is the optimizer's own step count as long as nothing resets the optimizer state; a method that
  clears it (``fire+upgd`` at a task boundary) restarts the bias correction's count but not the
  noise stream, whose key stays within the steps the engine prepared. An optimizer built without a
  clock (standalone use, tests) keys ξ by its own step count and draws it directly.

Optimizer-state policy: the traces u and the step count t (an int64 device tensor, incremented in
place) live in the optimizer's per-parameter state and are checkpointed with it; UPGD resets
nothing itself. Composed with a unit re-initialiser
(``cbp+upgd`` with ``reset_optimizer_state``) the traces of the re-initialised weights are zeroed,
so those weights get ū = ½ until their traces grow again. The protocol's SGD settings (step size,
momentum, weight decay) are not used: UPGD has its own η and λ and no momentum; a composition in
which another part asks for another optimizer (``cbp+upgd`` with ``cbp.optimizer=adamgnt``) is
refused. On ``icifar100`` the task's schedule scales η as it scales the protocol's rate (×0.2 at
epochs 60, 120, 160 of each increment, from η).

Defaults: the official repository's final settings for FirstOrderGlobalUPGD
(``experiments/statistics_*.py``, ``upgd2_grid``, the runs behind the paper's figures): on
``ipmnist``, UPGD's own input-permuted MNIST, η = 0.01, β = 0.9999, σ = 0.1, λ = 0.01
(``statistics_input_permuted_mnist.py``); on ``lpemnist``, UPGD's label-permuted EMNIST, and on
``lpmnist``, its protocol run on MNIST, η = 0.01, β = 0.9, σ = 0.001, λ = 0
(``statistics_output_permuted_emnist.py`` l.33-41); on ``lpcifar10``, UPGD's label-permuted
CIFAR-10, η = 0.01, β = 0.999, σ = 0.001, λ = 0 (``statistics_output_permuted_cifar10.py``
l.33-41). UPGD was not run on our other streams, so each takes
the settings of the nearest UPGD problem:

* ``pmnist``, ``scr`` and ``rlmnist`` (and the generic defaults): input-permuted MNIST (an MLP),
  η = 0.01, β = 0.9999, σ = 0.1, λ = 0.01;
* ``cimagenet`` and ``icifar100``: label-permuted CIFAR-10 (a conv net), η = 0.01, β = 0.999,
  σ = 0.001, λ = 0 (``statistics_output_permuted_cifar10.py``).

These are transfers, not values tuned on our streams. The repository's search grids
(``experiments/<problem>.py``) span η ∈ {1e-2…1e-5} and λ ∈ {0, 1e-1…1e-4}.

Vectorizable (``plastibench.members``): η, β, σ and λ (the optimizer applies each per member;
1 − η·λ is computed in float64 per member, as Python computes it, then cast).
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.clock import StepClock
from plastibench.members import is_zero, per_member, plus_
from plastibench.method import NON_NEGATIVE, POSITIVE, UNIT_OPEN, HyperparameterError, Method
from plastibench.optim import MemberSettings
from plastibench.registry import register_method


class UPGDOptimizer(MemberSettings, torch.optim.Optimizer):
    """First-order, global-max UPGD on seed-batched parameters ``[S, ...]``.

    ``purposes[i]`` names the i-th parameter (over all groups, in order) for its noise draws.
    With the run's ``clock`` the noise of a step is keyed by ``clock.step + 1`` and read from a
    prepared :class:`rng.Block`; without one, by the optimizer's own step count, drawn directly.
    """

    def __init__(self, params, seeds: torch.Tensor, purposes: list[str], lr: float, weight_decay: float,
                 beta_utility: float, sigma: float, clock: StepClock | None = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma)
        super().__init__(params, defaults)
        self._install(defaults)  # per-member settings: the optimizer's own copies
        self.seeds = seeds
        self.clock = clock
        flat = [p for group in self.param_groups for p in group["params"]]
        if len(purposes) != len(flat):
            raise ValueError(f"{len(purposes)} names for {len(flat)} parameters")
        self._purposes = {id(p): f"upgd/{name}" for p, name in zip(flat, purposes)}
        self._noise = ({id(p): rng.Block(seeds, self._purposes[id(p)], tuple(p.shape[1:]), rng.normal)
                        for p in flat} if clock is not None else {})

    def _xi(self, p: torch.Tensor, step_count: torch.Tensor) -> torch.Tensor:
        """ξ ``[S, ...]`` of ``p`` for this step (see the class docstring for its key)."""
        if self.clock is not None:
            return self._noise[id(p)].at(self.clock.step + 1)
        return rng.normal(self.seeds, step_count, self._purposes[id(p)], tuple(p.shape[1:]))

    @staticmethod
    def _per_seed(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        live = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not live:
            return loss
        maxima = []
        for group, p in live:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.int64, device=p.device)
                state["utility"] = torch.zeros_like(p)
            state["step"] += 1  # in place, on the device
            beta, utility = group["beta_utility"], state["utility"]
            plus_(utility.mul_(per_member(beta, utility)), -p.grad * p, 1 - beta)
            maxima.append(state["utility"].flatten(1).amax(1))
        global_max = torch.stack(maxima).amax(0)  # [S]: per seed, over all of its parameters
        for group, p in live:
            state = self.state[p]
            lr, beta, sigma = group["lr"], group["beta_utility"], group["sigma"]
            corrected = state["utility"] / per_member(1 - torch.pow(beta, state["step"].double()), p)
            ratio = corrected / self._per_seed(global_max, p)
            ratio = torch.where(corrected == 0, torch.zeros_like(ratio), ratio)
            gate = 1 - torch.sigmoid(ratio)
            direction = p.grad if is_zero(sigma) else p.grad + per_member(sigma, p) * self._xi(p, state["step"])
            plus_(p.mul_(per_member(1 - lr * group["weight_decay"], p)), direction * gate, -lr)
        return loss


@register_method("upgd")
class UPGD(Method):
    claims = frozenset({"optimizer", "weight_decay"})
    summary = "utility-gated perturbed SGD: useful weights are protected, the others get noisy steps"
    paper = ("Elsayed & Mahmood, Addressing loss of plasticity and catastrophic forgetting in continual "
             "learning, ICLR 2024")
    defaults = {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01}
    # β < 1: the trace's bias correction divides by 1 − β^t
    bounds = {"lr": POSITIVE, "beta_utility": UNIT_OPEN, "sigma": NON_NEGATIVE, "weight_decay": NON_NEGATIVE}
    vectorizable = frozenset({"lr", "beta_utility", "sigma", "weight_decay"})
    task_defaults = {
        "scr": {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01},
        "pmnist": {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01},
        "ipmnist": {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01},
        "lpmnist": {"lr": 0.01, "beta_utility": 0.9, "sigma": 0.001, "weight_decay": 0.0},
        "lpemnist": {"lr": 0.01, "beta_utility": 0.9, "sigma": 0.001, "weight_decay": 0.0},
        "lpcifar10": {"lr": 0.01, "beta_utility": 0.999, "sigma": 0.001, "weight_decay": 0.0},
        "cimagenet": {"lr": 0.01, "beta_utility": 0.999, "sigma": 0.001, "weight_decay": 0.0},
        "icifar100": {"lr": 0.01, "beta_utility": 0.999, "sigma": 0.001, "weight_decay": 0.0},
    }

    def build_optimizer(self, params, spec):
        if spec.name != self.run.protocol.optimizer.name:  # e.g. cbp+upgd with cbp.optimizer=adamgnt
            raise HyperparameterError(f"upgd replaces the optimizer, so it cannot run the {spec.name!r} "
                                      "that another part of this composition asks for")
        names = {id(p): n for n, p in self.run.net.named_parameters()} if self.run.net is not None else {}
        purposes = [names.get(id(p), f"param{i}") for i, p in enumerate(params)]
        return UPGDOptimizer(params, self.run.seeds, purposes, lr=self.hp["lr"],
                             weight_decay=self.hp["weight_decay"], beta_utility=self.hp["beta_utility"],
                             sigma=self.hp["sigma"], clock=self.run.clock)
