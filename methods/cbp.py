"""Continual backpropagation (``cbp``): generate-and-test on hidden units after every step.

Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood & Sutton, "Loss of plasticity in deep continual
learning", Nature 632:768-774 (2024). Restated from the reference code
(``shibhansh/loss-of-plasticity``, ``lop/algos/gnt.py`` for MLPs, ``convGnT.py`` for conv nets,
``res_gnt.py`` for the CIFAR ResNet-18). Two variants, chosen by ``variant``:

**"gnt"** (GnT / ConvGnT: ``scr``, ``pmnist``, ``cimagenet``). Update rule, after each optimizer step, for every
hidden layer l with units j (h = the unit's activations in this step's forward pass, W_in / W_out its
incoming / outgoing weights, η the decay rate, all per seed):

    age_j += 1;            c_j = 1 − η^age_j                       (Adam-style bias correction)
    a_j  ← η·a_j + (1−η)·mean_batch(h_j);      f_j = a_j / c_j      (mean activation)
    y_j  = mean|W_out[:, j]| · mean_batch|h_j|                       utility "contribution"
         = mean|W_out[:, j]| · mean_batch|h_j − f_j|                 "zero_contribution"
         = mean|W_out[:, j]| · mean_batch|h_j − f_j| / mean|W_in[j]| "adaptable_contribution"
    u_j  ← η·u_j + (1−η)·y_j;                  û_j = u_j / c_j
    E    = { j : age_j > m }                                        (mature units)
    k    = "accumulate": r += ρ·|E|; k = ⌊r⌋; r −= k                  (Permuted MNIST)
           "bernoulli":  k = 1 w.p. ρ·|E| if ρ·|E| < 1, else ⌊ρ·|E|⌋  (SCR, PPO)
           "layer":      once |E| > 0, r += ρ·n_l; k = ⌊r⌋; r −= k    (ConvGnT, ResGnT)
    the k units of E with the smallest û (ties: lowest index) get
    W_in[j] ~ U(±b_l), bias_j = 0, W_out[:, j] = 0, u_j = a_j = 0, age_j = 0.

As in GnT, every layer is first tested (ages, utilities, counts and choices, all on the
post-step weights) and only then are the chosen units of every layer replaced, layer by layer.

b_l by ``init`` for linear units: "kaiming" gain·√(3/fan_in) (GnT's default), "default"
√(1/fan_in), "lecun" √(3/fan_in), "xavier" gain·√(6/(fan_in+n_l)); conv filters always
U(±√(1/fan_in)), as ConvGnT. The paper's Eq. 1 sums |W_out| where the code averages it, which
ranks units identically within a layer.

Conv layers follow ConvGnT (``lop/algos/convGnT.py``): a channel's activations are averaged over
the batch and the pooled map's positions, mean|W_out| runs over the next conv's (out, kh, kw);
for the last conv, whose channel c feeds the flattened inputs 4c..4c+3 of the first linear layer,
the product mean|W_out[:, p]|·mean_batch|h_p − f_c| is taken per input p and then averaged over
the 4, and outgoing weights 4c..4c+3 are zeroed.

**"resgnt"** (ResGnT, ``lop/algos/res_gnt.py``: ``icifar100``). Hidden layers are the ResNet-18's 17
convs other than the downsample ones, each with the BatchNorm that follows it (``unit_groups()``).
Update rule, after each optimizer step, per hidden layer, per unit j:

    age_j += 1
    M_j  ← M_j + (1−η)·mean_{batch,positions}|h_j|      NO decay factor: a scaled running sum,
                                                         never reset, also not for a replaced unit
    E    = { j : age_j > m };  k by ``count_rule`` (ResGnT's own is "layer", above)
    y_j  = mean|W_out[:, j]| · M_j                       utility "contribution" (no EMA, no bias
         = mean|W_out[:, j]|                             "weight"                 correction)
    the k units of E with the smallest y (ties: lowest index) get
    W_in[j] ~ N(0, gain²/fan_in) (ReLU gain √2: Kaiming-normal, fan_in = in·kh·kw), bias_j = 0,
    W_out[:, j] = 0, age_j = 0, and their BatchNorm channel weight 1, bias 0, running mean 0,
    running variance 1.

mean|W_out[:, j]| runs over the next conv's (out, kh, kw), or the fc's rows. ResGnT computes y only
in a step where k > 0 (its stored utility is overwritten whole before every use, so nothing carries
over); we compute it every step, without a host sync, and use it only where k > 0: the same choices.
The new-unit init is ResGnT's only one, so this variant requires ``init`` "kaiming_normal" (and gnt
refuses it); utilities other than contribution/weight do not exist in ResGnT and are refused, as is
``next_bias_correction`` (ResGnT has no bias correction).

Which feature feeds which layer, as ResGnT (feature i with hidden layer i, ``BatchedResNet18.forward``):
the stem's ReLU output (stem conv); per block the post-bn1 ReLU output (its conv1) and the block's
output relu(bn2(conv2(·)) + identity) (its conv2: the residual sum, not the conv's own output); for
the last conv the reference passes the average-pooled [S, B, 512] vector instead of the map. Since
that map is a ReLU output (≥ 0), mean_batch|pooled| equals mean_{batch,positions}|h|, so the last
layer is measured as the others. Oddities of the reference that we keep: the outgoing weights of
the stem conv and of a block's conv2 are only the next conv1's input channel, while the next block's
identity path or downsample conv still reads the unit (so a new unit, with its BN reset to weight 1,
is not silent there); downsample convs are never replaced; a new unit inherits its predecessor's
M_j (it cannot be chosen again before age m). Where k exceeds |E| the
reference's ``topk`` would raise; we replace all of E.

Deliberate choices where the reference code departs from the paper (each offered as an option):

* ``next_bias_correction`` (default off = reference): the paper moves a replaced unit's mean
  contribution into the next layer's bias; in GnT that line runs after a_j was zeroed and adds 0
  (ConvGnT has no such line). We reproduce what produced the published numbers; set it to true for
  the paper's correction b_next += W_out[:, j]·f_j (fully connected next layers only).
* ``reset_optimizer_state`` (default off = reference): the reference resets state only with its
  AdamGnT optimizer, which no shipped config uses; SGD momentum and torch-Adam moments are never
  touched (ResGnT never resets any). True zeroes every per-element optimizer state of the unit's
  incoming and outgoing weights (and of its BN weight and bias).
* SCR's config sets ``maturity_threshold`` 100 but ``expr.py`` ignores it and runs m = 10: the
  ``scr`` default is 10, what ran; pass ``--set maturity_threshold=100`` for the config's value.

Optimizer (``optimizer``): "default" keeps the optimizer the protocol or another part chooses (SGD;
torch's Adam in ``cbp+adam``). "adamgnt" is the reference's CBP with Adam (``opt='adam'`` in
``lop/algos/cbp.py`` / ``convCBP.py``): :class:`plastibench.optim.AdamGnT`, whose update is
θ ← θ − lr·(1−β2^t)·m/(√v+ε) with a step count t per element (not Adam's bias correction), with
the lr, betas, ε and weight decay of the chosen optimizer (``cbp``: the protocol's lr, β = (0.9,
0.999), ε = 1e-8; ``cbp+adam``: adam's) and no momentum. As ``GnT.update_optim_params`` does for
AdamGnT, after each replacement m, v and t of the unit's incoming weights and bias and outgoing
weights are zeroed (whatever ``reset_optimizer_state`` says); the next layer's bias keeps its state.
Deliberate deviations: ConvGnT forgets to zero m of a conv unit's incoming weights (it zeroes
their v and t); we zero it as GnT does. ResGnT has no AdamGnT branch; ``resgnt`` resets as GnT.
The default is "default" on every task: no shipped CBP config sets ``opt='adam'``.

Per-task defaults (reference configs): ``scr`` ρ = 1e-4 (**plastibench's choice** from the sweep
1e-6…1e-2 in ``cfg/sgd/cbp/relu.json``, which singles out none; not tuned here), m = 10, η = 0.99,
adaptable contribution, Bernoulli count, kaiming init; ``pmnist`` ρ = 1e-6 (the setting plotted in ``plots/all_metrics.py``), m = 100, η = 0.99,
adaptable contribution, accumulated count, kaiming init; ``cimagenet`` (``lop/imagenet/cfg/cbp.json``,
``single_expr.py`` passes ``init='default'``) gnt, ρ = 3e-4, m = 100, η = 0.99, adaptable
contribution, layer count, default init (U(±√(1/fan_in)) for linear units; convs use it anyway);
``icifar100`` (``lop/incremental_cifar/cfg/continual_backpropagation.json``; η = 0.99 and ReLU are
fixed in ``incremental_cifar_experiment.py``) resgnt, ρ = 1e-5, m = 1000, η = 0.99, contribution,
layer count, kaiming-normal init; ``sant`` and ``ant`` (``lop/rl/cfg/*/cbp.yml``, ``lop/algos/rl/ppo.py``:
GnT on the policy and on the value net after every mini-batch update) gnt, ρ = 1e-4, m = 10 000,
η = 0.99, contribution, Bernoulli count, lecun init (``ppo.py`` passes ``init='lecun'``); the
paper's CBP agent is ``cbp+l2`` (``l2`` then sets weight decay 1e-4 and Adam β = (0.99, 0.99)).

Vectorizable (``plastibench.members``): ρ, η and m may differ per member. The static bound K on a
layer's replacements per step is the largest member's; a member's count never exceeds its own bound,
and its new weights are the first rows of the (K, fan_in) draw, which are the draws it makes alone
(``plastibench.rng`` numbers elements by flat index), so every member replaces the units, with the
weights, that it replaces alone. The count keeps the scalar path's float64 arithmetic (the coin
``draw ≤ ρ·|E|``), η enters each member's averages as the number would (1 − η computed in float64).
A member with ρ = 0 replaces nothing, as CBP alone, which then skips the step (the member's unit
statistics still run; no parameter depends on them).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from plastibench import rng
from plastibench.members import host_values, is_zero, per_member
from plastibench.method import NON_NEGATIVE, UNIT, UNIT_OPEN, HyperparameterError, Method, StepInfo
from plastibench.nn import gain, init_bound
from plastibench.registry import register_method
from plastibench.units import UnitGroup


def _unit_view(h: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """Features -> ``[S, n, samples, positions]``.

    ``[S, B, n, *spatial]`` (conv maps, or ``[S, B, n]``) -> ``[S, n, B·spatial, 1]``; a flattened
    conv output ``[S, B, n·g]`` whose unit owns g next-layer inputs -> ``[S, n, B, g]``; a conv map
    ``[S, B, n·g, H, W]`` whose unit owns g consecutive channels (CReLU) -> ``[S, n, B·H·W, g]``.
    """
    h = h.detach()
    s, b, n, g = h.shape[0], h.shape[1], group.n_units, group.outgoing_weight.group
    if g > 1 and h.dim() > 3:
        return h.reshape(s, b, n, g, -1).permute(0, 2, 1, 4, 3).reshape(s, n, -1, g)
    if g > 1:
        return h.view(s, b, n, g).transpose(1, 2)
    return h.movedim(2, 1).reshape(s, n, -1, 1)


def _mean_magnitude(h: torch.Tensor, group: UnitGroup) -> torch.Tensor:
    """mean |h_j| over the batch and every position of unit j, ``[S, n]``, from ``[S, B, n, *spatial]``
    or ``[S, B, n·g]`` (a flattened conv output), without copying the activations."""
    h = h.detach()
    h = h.reshape(h.shape[0], h.shape[1], group.n_units, -1)
    return torch.linalg.vector_norm(h, 1, dim=(1, 3)) / (h.shape[1] * h.shape[3])


def _bound(init: str, group: UnitGroup) -> float:
    """New incoming weights ~ U(±bound): per ``init`` for linear units; conv filters always
    U(±√(1/fan_in)), as ConvGnT (``get_layer_bound`` ignores ``init`` for Conv2d)."""
    if group.incoming_weight.param.dim() > 3:
        return init_bound("default", group.fan_in, group.n_units, group.activation)
    return init_bound(init, group.fan_in, group.n_units, group.activation)


def max_replacements(rate: float, n_units: int, count_rule: str) -> int:
    """A static bound K on the units one layer replaces in one step (so no host sync is needed)."""
    if count_rule == "bernoulli":
        return min(n_units, max(1, math.floor(rate * n_units)))
    return min(n_units, math.floor(rate * n_units) + 1)


@register_method("cbp")
class ContinualBackprop(Method):
    claims = frozenset({"units"})
    summary = "continual backprop: replace low-utility mature units by fresh ones every step"
    paper = ("Dohare et al., Loss of plasticity in deep continual learning, Nature 632:768-774 (2024); "
             "Dohare, Sutton & Mahmood, Continual backprop, arXiv:2108.06325")
    defaults = {
        "replacement_rate": 1e-4,
        "maturity_threshold": 100,
        "decay_rate": 0.99,
        "utility": "contribution",
        "count_rule": "accumulate",
        "init": "kaiming",
        "next_bias_correction": False,
        "reset_optimizer_state": False,
        "variant": "gnt",
        "optimizer": "default",
    }
    task_defaults = {
        "scr": {"replacement_rate": 1e-4, "maturity_threshold": 10, "utility": "adaptable_contribution",
                "count_rule": "bernoulli", "init": "kaiming"},
        "pmnist": {"replacement_rate": 1e-6, "maturity_threshold": 100, "utility": "adaptable_contribution",
                   "count_rule": "accumulate", "init": "kaiming"},
        "cimagenet": {"variant": "gnt", "replacement_rate": 3e-4, "maturity_threshold": 100, "decay_rate": 0.99,
                      "utility": "adaptable_contribution", "count_rule": "layer", "init": "default"},
        "icifar100": {"variant": "resgnt", "replacement_rate": 1e-5, "maturity_threshold": 1000, "decay_rate": 0.99,
                      "utility": "contribution", "count_rule": "layer", "init": "kaiming_normal"},
        **dict.fromkeys(("sant", "ant"), {"replacement_rate": 1e-4, "maturity_threshold": 10_000, "decay_rate": 0.99,
                                          "utility": "contribution", "count_rule": "bernoulli", "init": "lecun"}),
    }
    # ρ a fraction of the units per step (0: CBP off); m a count of steps; η < 1, else the bias
    # correction 1 − η^age is 0 and the running averages never move.
    bounds = {"replacement_rate": UNIT, "maturity_threshold": NON_NEGATIVE, "decay_rate": UNIT_OPEN}
    vectorizable = frozenset({"replacement_rate", "decay_rate", "maturity_threshold"})
    choices = {
        "variant": ("gnt", "resgnt"),
        "optimizer": ("default", "adamgnt"),
        "utility": ("contribution", "zero_contribution", "adaptable_contribution", "weight"),
        "count_rule": ("accumulate", "bernoulli", "layer"),
        "init": ("kaiming", "default", "lecun", "xavier", "kaiming_normal"),
    }

    def __init__(self, hparams, run):
        # hyperparameters not given (e.g. ``variant`` by callers written before it existed) take the defaults
        super().__init__({**self.defaults, **hparams}, run)

    def optimizer_spec(self, spec):
        """AdamGnT with the chosen optimizer's lr, betas, ε and weight decay, when asked."""
        if self.hp["optimizer"] == "adamgnt":
            return replace(spec, name="adamgnt", momentum=0.0)
        return spec

    def _resets_optimizer_state(self) -> bool:
        return self.hp["reset_optimizer_state"] or self.hp["optimizer"] == "adamgnt"

    def _check_variant(self) -> None:
        hp = self.hp
        if hp["variant"] == "resgnt":
            if hp["utility"] not in ("contribution", "weight"):
                raise HyperparameterError(f"variant resgnt (ResGnT) has the utilities contribution and weight, "
                                          f"not {hp['utility']!r}")
            if hp["init"] != "kaiming_normal":
                raise HyperparameterError(f"variant resgnt draws new units from N(0, gain²/fan_in): set "
                                          f"init=kaiming_normal (got {hp['init']!r})")
            if hp["next_bias_correction"]:
                raise HyperparameterError("variant resgnt (ResGnT) has no next-layer bias correction")
        else:
            if hp["utility"] == "weight":
                raise HyperparameterError("utility weight belongs to variant resgnt (ConvGnT has none)")
            if hp["init"] == "kaiming_normal":
                raise HyperparameterError("init kaiming_normal belongs to variant resgnt; gnt draws uniforms "
                                          "(kaiming, default, lecun, xavier)")

    def _max_replacements(self, group: UnitGroup) -> int:
        """K of ``group``: the largest of the members' bounds (a member's count never exceeds its own)."""
        return max(max_replacements(rate, group.n_units, self.hp["count_rule"])
                   for rate in host_values(self.hp["replacement_rate"]))

    def configure_network(self, net):
        self._check_variant()
        self.groups: list[UnitGroup] = net.unit_groups()
        self.K = [self._max_replacements(g) for g in self.groups]
        if self.hp["variant"] == "resgnt":
            return self._configure_resgnt(net)
        if self.hp["next_bias_correction"] and any(
                g.outgoing_weight.param.dim() != 3 or g.outgoing_weight.group != 1 for g in self.groups):
            raise HyperparameterError("next_bias_correction is defined for fully connected next layers only; "
                                      "this network has conv or flattened-conv units")
        s = self.run.seeds.numel()
        dev = self.run.seeds.device
        self.state = [
            {
                "age": torch.zeros(s, g.n_units, dtype=torch.int64, device=dev),
                "util": torch.zeros(s, g.n_units, device=dev),
                "mean_act": torch.zeros(s, g.n_units, device=dev),
                "pending": torch.zeros(s, dtype=torch.float64, device=dev),
            }
            for g in self.groups
        ]
        self.draws = [
            {
                "count": rng.Block(self.run.seeds, f"cbp/{g.name}/count", ()),
                "init": rng.Block(self.run.seeds, f"cbp/{g.name}/init", (k, g.fan_in), low=-1.0, high=1.0),
            }
            for g, k in zip(self.groups, self.K)
        ]
        return net

    def _configure_resgnt(self, net):
        s, dev = self.run.seeds.numel(), self.run.seeds.device
        self.state = [
            {
                "age": torch.zeros(s, g.n_units, dtype=torch.int64, device=dev),
                "feature_mag": torch.zeros(s, g.n_units, device=dev),
                "pending": torch.zeros(s, dtype=torch.float64, device=dev),
            }
            for g in self.groups
        ]
        self.draws = [
            {
                "count": rng.Block(self.run.seeds, f"cbp/{g.name}/count", ()),
                "init": rng.Block(self.run.seeds, f"cbp/{g.name}/normal", (k, g.fan_in), rng.normal,
                                  length=16,  # big layers draw K·fan_in per step
                                  std=gain(g.activation) * math.sqrt(1.0 / g.fan_in)),
            }
            for g, k in zip(self.groups, self.K)
        ]
        return net

    @torch.no_grad()
    def after_step(self, info: StepInfo) -> None:
        if is_zero(self.hp["replacement_rate"]):
            return
        if self.hp["variant"] == "resgnt":
            self._resgnt_step(info)
            return
        chosen = [self._test(group, _unit_view(h, group), state, draws, info.step, k_max)
                  for group, h, state, draws, k_max in zip(self.groups, info.features, self.state, self.draws,
                                                           self.K)]
        for group, state, draws, (idx, valid, mean_act) in zip(self.groups, self.state, self.draws, chosen):
            self._generate(group, state, draws, info.step, idx, valid, mean_act)

    def _utility(self, group: UnitGroup, h: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Update and return the bias-corrected utility û and mean activation f, both ``[S, n]``."""
        eta = self.hp["decay_rate"]
        age = state["age"].double()
        correction = 1.0 - per_member(eta, age) ** age
        batch_mean = h.mean((2, 3))
        state["mean_act"].mul_(per_member(eta, batch_mean)).add_(per_member(1 - eta, batch_mean) * batch_mean)
        mean_act = state["mean_act"] / correction.float()
        kind = self.hp["utility"]
        centred = h if kind == "contribution" else h - mean_act[..., None, None]
        y = (group.outgoing_weight.slot_magnitude() * centred.abs().mean(2)).mean(-1)
        if kind == "adaptable_contribution":
            y = y / group.incoming_magnitude()
        state["util"].mul_(per_member(eta, y)).add_(per_member(1 - eta, y) * y)
        return state["util"] / correction.float(), mean_act

    def _count(self, group: UnitGroup, n_eligible: torch.Tensor, state: dict, draw: torch.Tensor) -> torch.Tensor:
        rate, rule = self.hp["replacement_rate"], self.hp["count_rule"]
        rate = per_member(rate, state["pending"])  # float64, as the scalar path's products
        if rule == "bernoulli":
            expected = rate * n_eligible.double()
            coin = ((draw.double() <= expected) & (n_eligible > 0)).double()
            k = torch.where(expected < 1, coin, torch.floor(expected)).long()
        else:
            add = rate * (n_eligible.double() if rule == "accumulate" else (n_eligible > 0).double() * group.n_units)
            state["pending"] += add
            k = torch.floor(state["pending"])
            state["pending"] -= k
            k = k.long()
        if torch.is_tensor(rate):  # a member with ρ = 0 replaces nothing, as CBP alone returns at once
            k = k * (rate > 0)
        return k

    def _eligible(self, state: dict) -> torch.Tensor:
        age = state["age"]
        return age > per_member(self.hp["maturity_threshold"], age)

    def _test(self, group: UnitGroup, h: torch.Tensor, state: dict, draws: dict, step: int, k_max: int):
        """Age, update utilities and choose ``idx[S, K]`` (used where ``valid[S, K]``) to replace."""
        state["age"] += 1
        util, mean_act = self._utility(group, h, state)
        eligible = self._eligible(state)
        n_eligible = eligible.sum(1)
        k = torch.minimum(self._count(group, n_eligible, state, draws["count"].at(step)), n_eligible)
        key = torch.where(eligible, util, torch.full_like(util, math.inf))
        idx = torch.sort(key, dim=1, stable=True).indices[:, :k_max]
        valid = torch.arange(k_max, device=idx.device) < k.unsqueeze(1)
        return idx, valid, mean_act

    def _generate(self, group: UnitGroup, state: dict, draws: dict, step: int, idx: torch.Tensor,
                  valid: torch.Tensor, mean_act: torch.Tensor) -> None:
        """Re-initialise the chosen units and reset their utility, mean activation and age."""
        if self.hp["next_bias_correction"]:
            w_out = group.outgoing_weight.gather(idx)
            group.outgoing_bias.add_((w_out * (mean_act.gather(1, idx) * valid).unsqueeze(-1)).sum(1))
        bound = _bound(self.hp["init"], group)
        group.reinitialise(idx, valid, bound * draws["init"].at(step))
        if self._resets_optimizer_state():
            group.reset_optimizer_state(self.run.optimizer, idx, valid)
        replaced = torch.zeros_like(state["age"], dtype=torch.bool).scatter_(1, idx, valid)
        for name in ("util", "mean_act", "age"):
            state[name].masked_fill_(replaced, 0)

    def _resgnt_step(self, info: StepInfo) -> None:
        """ResGnT: test every layer on the post-step weights, then replace layer by layer."""
        eta, step = self.hp["decay_rate"], info.step
        chosen = []
        for group, h, state, draws, k_max in zip(self.groups, info.features, self.state, self.draws, self.K):
            state["age"] += 1
            magnitude = _mean_magnitude(h, group)
            state["feature_mag"].add_(per_member(1 - eta, magnitude) * magnitude)  # no decay: a running sum
            eligible = self._eligible(state)
            n_eligible = eligible.sum(1)
            k = torch.minimum(self._count(group, n_eligible, state, draws["count"].at(step)), n_eligible)
            util = group.outgoing_magnitude()
            if self.hp["utility"] == "contribution":
                util = util * state["feature_mag"]
            key = torch.where(eligible, util, torch.full_like(util, math.inf))
            idx = torch.sort(key, dim=1, stable=True).indices[:, :k_max]
            chosen.append((idx, torch.arange(k_max, device=idx.device) < k.unsqueeze(1)))
        for group, state, draws, (idx, valid) in zip(self.groups, self.state, self.draws, chosen):
            group.reinitialise(idx, valid, draws["init"].at(step))  # W_in ~ N, bias 0, W_out 0, BN reset
            if self._resets_optimizer_state():
                group.reset_optimizer_state(self.run.optimizer, idx, valid)
            replaced = torch.zeros_like(state["age"], dtype=torch.bool).scatter_(1, idx, valid)
            state["age"].masked_fill_(replaced, 0)  # feature_mag is kept, as ResGnT

    def state_dict(self):
        return {"layers": [{k: v.clone() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state):
        for mine, saved in zip(self.state, state["layers"]):
            for k, v in saved.items():
                mine[k].copy_(v)
