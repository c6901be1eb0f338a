"""Self-Normalized Resets (``snr``): reset a unit once it has been silent longer than its own norm.

Farias & Jozefiak, "Self-Normalized Resets for Plasticity in Continual Learning", ICLR 2025
(arXiv:2410.20098). Restated from the official code (``ajozefiak/SelfNormalizedResets``,
``src/algorithms/snr.py``: ``increment_neuron_ages_snr``, ``reset_neurons_snr_`` and its Adam
variant, ``update_tau_``; the loop of ``src/experiments/pm_experiment.py``; defaults of
``src/models/refactored_MLP.py::init_fn_sgd``); compared with the PyTorch port in
``isaac7778/FIRE`` ``vision/interventions/node_reset/snr.py``.

State per hidden unit i (conv channels are units), per seed: its age a_i (examples since it last
fired), its reset threshold τ_i, and a histogram H_i of completed silent spells. Ages and
thresholds count examples, so a step of batch B adds B.

Every step, on the step's forward pass (before the optimizer step, as the official loop does):

    fired_i = some example (and, for conv maps, some position) has h_i > 0
    if fired_i:  H_i[a_i] += 1 (if 1 ≤ a_i ≤ τ_max);  a_i ← 0   (spells of 0, firing on consecutive
                                                                steps, never count: not stored)
    else:        a_i ← a_i + B

then, after the optimizer step, layer by layer in order:

    if a_i ≥ τ_i:  H_i[a_i] += 1 (if a_i ≤ τ_max);  a_i ← 0;  reset unit i

where a reset redraws the incoming weights from the network's initial distribution
(``plastibench.units.incoming_init``), sets the bias to 0, the outgoing weights to 0 and a
following BatchNorm/LayerNorm to its initial state (the official code, like CBP, does this layer
after layer, so a weight joining two reset units keeps its fresh incoming value).

At the start of task t, when t > 0 and t is a multiple of F (the official ``update_tau`` after
task t−1, ``(task+1) % threshold_reset_freq == 0``), every threshold is re-estimated from the
spells of the last F tasks and the histograms are cleared:

    N_i = Σ_{a ≥ 1} H_i[a];   q_i = min{a ≥ 1 : Σ_{1≤b≤a} H_i[b] ≥ p·N_i}   (q_i = 1 when N_i = 0)
    τ_i ← max(τ_min, min(τ_max, q_i if q_i < τ_i else γ·τ_i))

i.e. τ contracts to the p-th percentile of the unit's own silent-spell lengths when that is below
it, and otherwise expands by γ. τ_min = 100 is the official code's literal floor (``batch_size =
100`` in ``update_tau_``, in examples); the FIRE port uses one batch instead.

"Fires" is the official test: the official ages count a unit as silent on an example when its
value is ≤ 0, and the values it tests are the outputs of the ``nn.Dense`` modules that flax's
``capture_intermediates`` records, i.e. the **pre-activations** z (``src/algorithms/neuron_ages.py``,
``src/models/MLP.py``). So a unit fires when z_i > 0 on some example. We test the features the
network returns (post-activation; for the ConvNet the pooled maps, for the ResNet's last block its
pooled output): for ReLU, leaky ReLU, tanh, swish and ELU, h > 0 ⇔ z > 0, the official test (max
pooling keeps "some position > 0"; the ConvNet's even map sizes leave no position out). For CReLU
a unit j has two outputs, relu(z_j) and relu(−z_j); "some output > 0" would be z_j ≠ 0 (a unit
would then never be silent), so we test its relu(z_j) half alone, which is z_j > 0, the official
test. With sigmoid every unit always fires.

Implementation (exact where noted):

* Ages only ever grow by whole batches, so the histogram has one bin per batch length B (the
  protocol's batch size): bin k holds spells of k·B examples, k = 1 … ⌊τ_max/B⌋, and q_i is a
  multiple of B exactly as in the official per-example histogram (whose other bins stay empty).
  Memory: 4·S·(Σ_l n_l)·⌊τ_max/B⌋ bytes (online permuted MNIST, 10 seeds, τ_max 20 000: 4.8 GB on
  the device; Continual ImageNet, B = 100: 0.4 MB a seed). Reached percentiles are counted in
  integers: Σ H ≥ ⌈p·N − 10⁻⁹⌉, so that p = 0.07, N = 100 needs 7 (the official code compares float32
  ratios, Σ H / N ≥ p).
* ``max_reset_fraction`` ρ (default 1: no cap): ρ ≥ 1 resets every due unit in the step, exactly
  the official rule (K = n_l, the uncapped path). An optional cap ρ < 1 resets at most
  K = ⌈ρ·n_l⌉ ≥ 1 units of a layer in one step: the most overdue (largest a_i/τ_i, ties to the lower
  index) go first and the others wait for the next step (they stay due; a unit that fires
  meanwhile records its spell as a firing). A cap keeps the fresh weights drawn per step small
  (K rows a layer, as CBP), but it departs from the official rule: on small layers (ρ = 0.01, the
  default before issue 11) it allows one reset a step, so due units wait, their spells run longer
  and push τ up.
* Fresh weights come from ``rng``, keyed by (seed, step, "snr/<layer>/init", slot).

Optimizer state (``reset_optimizer_state``, default true): the per-element state of every tensor a
reset unit owns (incoming weights, bias, outgoing weights, norm parameters) is zeroed, as the
official Adam variant zeroes m and v of the bias, incoming and outgoing kernels (its SGD variant
has no state); Adam's step count is kept.

Defaults: p = 0.99, F = 16 tasks, γ = 2 (official ``init_fn_sgd``); no reset cap (ρ = 1, official); τ_max = 20 000 and initial
τ = 10 000 = τ_max/2 (FIRE's port: the official code takes both from the experiment script, whose
values are not in the repository); τ_min = 100 (official). FIRE's scripts use p = 0.92 (ResNet-18)
and 0.96 (ViT). Differences of the FIRE port we do not follow: thresholds re-estimated every 16
optimizer steps instead of 16 tasks, ages above τ_max clamped into the last bin instead of dropped,
activations of the last 512 examples instead of the step's batch.
"""

from __future__ import annotations

import math

import torch

from plastibench.method import AT_LEAST_ONE, NON_NEGATIVE, HyperparameterError, Method, Range, StepInfo
from plastibench.registry import register_method
from plastibench.units import UnitGroup, incoming_init, incoming_shape, per_unit


def fired(h: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Whether each unit's pre-activation z was positive on some example (and position), ``[S, n]``
    bool: h > 0 on the features; for CReLU only the relu(z) half of each unit's (relu(z), relu(−z))."""
    v = per_unit(h.detach(), group)
    if group.activation == "crelu":  # unit j's values: its relu(z_j) half first, then its relu(−z_j) half
        v = v.reshape(*v.shape[:3], 2, -1)[:, :, :, 0]
    return v.amax((1, 3)) > 0


def max_resets(fraction: float, n_units: int) -> int:
    """K: the most units of one layer reset in one step."""
    return n_units if fraction >= 1 else min(n_units, max(1, math.ceil(fraction * n_units)))


@register_method("snr")
class SelfNormalizedResets(Method):
    claims = frozenset({"units"})
    needs_boundaries = True
    summary = "SNR: reset a unit silent for longer than the p-th percentile of its own silent spells"
    paper = ("Farias & Jozefiak, Self-Normalized Resets for Plasticity in Continual Learning, ICLR 2025 "
             "(arXiv:2410.20098)")
    defaults = {
        "percentile": 0.99,
        "threshold_update_every": 16,
        "expansion_factor": 2.0,
        "initial_threshold": 10000,
        "tau_max": 20000,
        "tau_min": 100,
        "max_reset_fraction": 1.0,
        "reset_optimizer_state": True,
    }
    # Thresholds count examples (τ ≥ 1); γ expands τ (γ < 1 would shrink it); the reset fraction ρ:
    # any value ≥ 1 (the default 1) resets all due units at once (no cap, the official rule);
    # ρ in [0, 1) caps K = ⌈ρ·n⌉ but K ≥ 1 (ρ = 0: one unit a step).
    # tau_max ≥ one batch depends on the protocol: checked in configure_network.
    bounds = {
        "percentile": Range(0, 1, low_open=True),
        "threshold_update_every": AT_LEAST_ONE,
        "expansion_factor": AT_LEAST_ONE,
        "initial_threshold": AT_LEAST_ONE,
        "tau_max": AT_LEAST_ONE,
        "tau_min": AT_LEAST_ONE,
        "max_reset_fraction": NON_NEGATIVE,
    }

    def configure_network(self, net):
        hp = self.hp
        self.bin = self.run.protocol.batch_size
        if hp["tau_max"] < self.bin:
            raise HyperparameterError(f"tau_max ({hp['tau_max']}) must be at least one batch ({self.bin} examples)")
        self.groups: list[UnitGroup] = net.unit_groups()
        seeds = self.run.seeds
        s, dev, bins = seeds.numel(), seeds.device, hp["tau_max"] // self.bin
        self.state = [
            {
                "age": torch.zeros(s, g.n_units, dtype=torch.int64, device=dev),
                "tau": torch.full((s, g.n_units), float(hp["initial_threshold"]), dtype=torch.float64, device=dev),
                "hist": torch.zeros(s, g.n_units, bins, dtype=torch.int32, device=dev),
            }
            for g in self.groups
        ]
        self.k = [max_resets(hp["max_reset_fraction"], g.n_units) for g in self.groups]
        self.draws = [incoming_init(net, g).block(seeds, f"snr/{g.name}/init", (k, *incoming_shape(g)),
                                                  length=64)
                      for g, k in zip(self.groups, self.k)]
        return net

    # ----- the histogram of silent spells -----
    def _record(self, state: dict, mask: torch.Tensor) -> None:
        """H_i[a_i] += 1 where ``mask`` and 1 ≤ a_i ≤ τ_max (bin ⌈a_i/B⌉ − 1)."""
        age, hist = state["age"], state["hist"]
        add = mask & (age > 0) & (age <= self.hp["tau_max"])
        bin_ = ((age + self.bin - 1) // self.bin - 1).clamp_(0, hist.shape[-1] - 1)
        hist.scatter_add_(2, bin_.unsqueeze(-1), add.unsqueeze(-1).to(hist.dtype))

    @torch.no_grad()
    def after_step(self, info: StepInfo) -> None:
        for group, state, h in zip(self.groups, self.state, info.features):
            fire = fired(h, group)
            self._record(state, fire)
            state["age"].add_(h.shape[1]).masked_fill_(fire, 0)
        for group, state, k, draws in zip(self.groups, self.state, self.k, self.draws):
            age, tau = state["age"], state["tau"]
            due = age >= tau
            if k < group.n_units:
                overdue = torch.where(due, age / tau, torch.full_like(tau, -math.inf))
                idx = torch.sort(overdue, dim=1, descending=True, stable=True).indices[:, :k]
                valid = due.gather(1, idx)
            else:
                idx = torch.arange(group.n_units, device=age.device).expand(age.shape[0], -1)
                valid = due
            chosen = torch.zeros_like(due).scatter_(1, idx, valid)
            self._record(state, chosen)
            age.masked_fill_(chosen, 0)
            group.reinitialise(idx, valid, draws.at(info.step))
            if self.hp["reset_optimizer_state"]:
                group.reset_optimizer_state(self.run.optimizer, idx, valid)

    @torch.no_grad()
    def on_task_start(self, task_index: int) -> None:
        if task_index > 0 and task_index % self.hp["threshold_update_every"] == 0:
            for state in self.state:
                self.update_thresholds(state)

    def update_thresholds(self, state: dict) -> None:
        """τ ← max(τ_min, min(τ_max, q if q < τ else γ·τ)), q the p-th percentile spell; clear H."""
        hp, hist, tau = self.hp, state["hist"], state["tau"]
        cum = hist.cumsum_(-1)  # in place: the histogram is cleared below anyway
        total = cum[..., -1].to(torch.int64)
        need = torch.ceil(hp["percentile"] * total.to(torch.float64) - 1e-9).clamp_(min=1).to(cum.dtype)
        first = torch.searchsorted(cum, need.unsqueeze(-1)).squeeze(-1)  # first bin with Σ ≥ ⌈p·N⌉
        q = torch.where(total > 0, ((first + 1) * self.bin).to(torch.float64), torch.ones_like(tau))
        new = torch.where(q < tau, q, hp["expansion_factor"] * tau)
        tau.copy_(torch.clamp_min(torch.clamp_max(new, float(hp["tau_max"])), float(hp["tau_min"])))
        hist.zero_()

    # ----- checkpointing (the histogram is mostly zeros: stored as its non-zero entries) -----
    def state_dict(self):
        layers = []
        for state in self.state:
            flat = state["hist"].view(-1)
            where = flat.nonzero().squeeze(1)
            layers.append({"age": state["age"].clone(), "tau": state["tau"].clone(),
                           "hist_index": where, "hist_count": flat[where].clone()})
        return {"layers": layers}

    def load_state_dict(self, state):
        for mine, saved in zip(self.state, state["layers"]):
            mine["age"].copy_(saved["age"])
            mine["tau"].copy_(saved["tau"])
            mine["hist"].zero_()
            dev = mine["hist"].device
            mine["hist"].view(-1)[saved["hist_index"].to(dev)] = saved["hist_count"].to(dev)
