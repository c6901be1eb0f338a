"""``snr`` (``methods/snr.py``) against a plain restatement of the official Self-Normalized Resets.

The reference is ``ajozefiak/SelfNormalizedResets`` ``src/algorithms/snr.py``
(``increment_neuron_ages_snr``, ``reset_neurons_snr_``, ``update_tau_``), restated below for ONE seed
with Python loops and a per-example histogram (``collections.Counter``) as the official one is, and
driven in lockstep with the seed-batched method on random firing patterns across several threshold
updates: ages, thresholds, histograms and the set of reset units must agree at every step.

Defining property: a unit is reset exactly when it has been silent for τ_i examples; τ_i moves to the
p-th percentile of the unit's own silent spells when that is lower, else grows by γ, within
[τ_min, τ_max].
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
import torch

from plastibench.method import RunContext, StepInfo
from plastibench.methods.snr import SelfNormalizedResets
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.units import incoming_init
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1, 2])
ADAM = OptimizerSpec("adam", lr=1e-3)
SMALL = {"percentile": 0.8, "threshold_update_every": 1, "expansion_factor": 2.0, "initial_threshold": 10,
         "tau_max": 40, "tau_min": 4, "max_reset_fraction": 1.0}


def snr_on(net, batch: int, seeds=SEEDS, optimizer=ADAM, **hp) -> SelfNormalizedResets:
    proto = Protocol(task="test", name="snr", version=1, n_tasks=1, steps_per_task=100, batch_size=batch,
                     optimizer=optimizer, metric="mse", higher_is_better=False)
    method = SelfNormalizedResets(SelfNormalizedResets.hparams_for("test", hp),
                                  RunContext(seeds=seeds, task="test", protocol=proto))
    method.run.net = method.configure_network(net)
    method.run.optimizer = method.build_optimizer(list(net.parameters()), optimizer)
    return method


class RefSNR:
    """The official rule for one seed: ages in examples, a per-example histogram per unit."""

    def __init__(self, sizes, hp, batch):
        self.hp, self.batch = hp, batch
        self.age = [[0] * n for n in sizes]
        self.tau = [[float(hp["initial_threshold"])] * n for n in sizes]
        self.hist = [[Counter() for _ in range(n)] for n in sizes]

    def _record(self, l, i):  # official: hist[age] += 1 only where an index equals the age (≤ τ_max)
        if self.age[l][i] <= self.hp["tau_max"]:
            self.hist[l][i][self.age[l][i]] += 1

    def step(self, fired):
        """``increment_neuron_ages_snr`` (all layers) then ``reset_neurons_snr_`` (layer by layer)."""
        for l, layer in enumerate(fired):
            for i, f in enumerate(layer):
                if f:
                    self._record(l, i)
                    self.age[l][i] = 0
                else:
                    self.age[l][i] += self.batch
        resets = []
        for l, ages in enumerate(self.age):
            for i, a in enumerate(ages):
                if a >= self.tau[l][i]:
                    self._record(l, i)
                    self.age[l][i] = 0
                    resets.append((l, i))
        return resets

    def update_tau(self):
        """``update_tau_``: percentile index over ages 1 … τ_max, contract or expand, clamp, clear."""
        hp, p = self.hp, Fraction(str(self.hp["percentile"]))
        for l, taus in enumerate(self.tau):
            for i, tau in enumerate(taus):
                h = self.hist[l][i]
                n = sum(c for a, c in h.items() if a >= 1)
                q, cum = 1, 0  # argmax of an all-False row is 0, so q = 1 when n = 0
                for a in range(1, hp["tau_max"] + 1):
                    cum += h[a]
                    if n and Fraction(cum, n) >= p:
                        q = a
                        break
                new = q if q < tau else hp["expansion_factor"] * tau
                self.tau[l][i] = max(hp["tau_min"], min(new, hp["tau_max"]))
                h.clear()


def test_lockstep_with_the_official_rule():
    batch, sizes = 2, (8, 7)
    torch.manual_seed(0)
    net = BatchedMLP(MLPSpec((6, *sizes, 3)), SEEDS)
    method = snr_on(net, batch, **SMALL)
    refs = [RefSNR(sizes, SMALL, batch) for _ in SEEDS]
    # per-unit firing probabilities per example, redrawn every 15 steps: from always to never
    rate, n_resets = None, 0
    for step in range(90):
        if step % 15 == 0:
            rate = [torch.rand(3, 1, n) ** 3 * (torch.rand(3, 1, n) > 0.25) for n in sizes]
        if step and step % 12 == 0:
            method.on_task_start(step // 12)
            for ref in refs:
                ref.update_tau()
        features = [torch.where(torch.rand(3, batch, n) < r, torch.rand(3, batch, n) + 0.1, -torch.rand(3, batch, n))
                    for r, n in zip(rate, sizes)]
        with torch.no_grad():
            for layer in net.layers[:-1]:
                layer.bias.fill_(1.0)
        method.after_step(StepInfo(step, 0, features))
        for s, ref in enumerate(refs):
            fired = [(f[s] > 0).any(0).tolist() for f in features]
            resets = ref.step(fired)
            n_resets += len(resets)
            for l, (state, layer) in enumerate(zip(method.state, net.layers[:-1])):
                assert state["age"][s].tolist() == ref.age[l], (step, s, l)
                assert state["tau"][s].tolist() == ref.tau[l], (step, s, l)
                for i in range(sizes[l]):  # our bin k holds spells of (k+1)·B examples
                    ours = {(k + 1) * batch: c for k, c in enumerate(state["hist"][s, i].tolist()) if c}
                    theirs = {a: c for a, c in ref.hist[l][i].items() if a >= 1 and c}
                    assert ours == theirs, (step, s, l, i)
                reset = {i for (m, i) in resets if m == l}
                assert {i for i in range(sizes[l]) if layer.bias[s, i] == 0} == reset, (step, s, l)
    assert n_resets > 20
    taus = torch.cat([st["tau"].flatten() for st in method.state])
    assert len(set(taus.tolist())) > 3  # thresholds moved apart: contractions and expansions happened


def test_a_unit_is_reset_exactly_after_tau_silent_examples():
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    method = snr_on(net, 5, initial_threshold=15, tau_max=100, tau_min=5)
    out, _ = net(torch.randn(3, 5, 6))
    out.square().sum().backward()
    method.run.optimizer.step()
    live = torch.ones(3, 5, 4)
    silent = live.clone()
    silent[1, :, 2] = -1.0  # seed 1, unit 2 never fires from now on
    old = [p.detach().clone() for p in net.parameters()]
    for step in range(2):  # ages 5, 10 < 15: nothing happens
        method.after_step(StepInfo(step, 0, [silent]))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), old))
    method.after_step(StepInfo(2, 0, [silent]))  # age 15 = τ: reset now
    w_in, b_in, w_out = net.layers[0].weight, net.layers[0].bias, net.layers[1].weight
    # no cap (the default): one fresh row per unit, unit i takes slot i
    fresh = incoming_init(net, method.groups[0]).draw(SEEDS, 2, "snr/layer0/init", (4, 6))
    expected = old[0].clone()
    expected[1, 2] = fresh[1, 2]
    assert torch.equal(w_in, expected)
    assert b_in[1, 2] == 0 and torch.equal(b_in[0], old[1][0])
    assert torch.equal(w_out[1, :, 2], torch.zeros(3)) and torch.equal(w_out[0], old[2][0])
    opt = method.run.optimizer.state
    assert not opt[w_in]["exp_avg"][1, 2].any() and opt[w_in]["exp_avg"][1, 1].abs().sum() > 0
    assert not opt[w_out]["exp_avg_sq"][1, :, 2].any() and opt[w_out]["exp_avg_sq"][1, :, 1].abs().sum() > 0
    assert method.state[0]["age"][1, 2] == 0
    assert method.state[0]["hist"][1, 2, 2] == 1  # the reset recorded a spell of 15 = 3 batches


def test_threshold_update_contracts_expands_and_clamps():
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS[:1])
    method = snr_on(net, 1, seeds=SEEDS[:1], percentile=0.8, initial_threshold=10, tau_max=30, tau_min=2,
                    threshold_update_every=3)
    hist = method.state[0]["hist"]  # bin k = spells of k+1 examples
    for spell in (1, 1, 2, 5, 9):  # unit 0: ⌈0.8·5⌉ = 4 spells reached at 5 < 10: τ ← 5
        hist[0, 0, spell - 1] += 1
    hist[0, 1, 19] = 3  # unit 1: percentile 20 ≥ 10: τ ← 2·10
    hist[0, 3, 0] = 7  # unit 3: percentile 1: τ ← max(τ_min, 1) = 2; unit 2: no spell: q = 1 -> τ_min
    method.on_task_start(1)  # not a multiple of 3: nothing
    assert method.state[0]["tau"].tolist() == [[10.0] * 4] and hist.sum() == 15
    method.on_task_start(3)
    assert method.state[0]["tau"].tolist() == [[5.0, 20.0, 2.0, 2.0]] and hist.sum() == 0
    hist[0, 1, 29] = 1  # percentile 30 ≥ 20: 40, clamped to τ_max
    method.on_task_start(6)
    assert method.state[0]["tau"][0, 1] == 30.0


def test_percentile_is_decimal_and_spells_beyond_tau_max_are_not_counted():
    net = BatchedMLP(MLPSpec((6, 2, 3)), SEEDS[:1])
    method = snr_on(net, 1, seeds=SEEDS[:1], percentile=0.07, initial_threshold=8, tau_max=5, tau_min=1)
    hist = method.state[0]["hist"]
    hist[0, 0, 0], hist[0, 0, 2] = 7, 93  # 7 of 100 spells have length 1: 7/100 ≥ 0.07 (0.07·100 > 7 in floats)
    method.on_task_start(16)
    assert method.state[0]["tau"][0, 0] == 1.0
    method.state[0]["tau"][0, 1] = 8.0  # above τ_max, as an initial threshold may be
    h = torch.ones(1, 1, 2)
    h[0, 0, 1] = -1.0
    for step in range(8):  # unit 1 silent for 8 > τ_max = 5 examples: reset, but the spell is not recorded
        method.after_step(StepInfo(step, 0, [h]))
    assert method.state[0]["age"][0, 1] == 0 and net.layers[0].bias[0, 1] == 0 and hist[0, 1].sum() == 0


def test_at_most_k_resets_a_step_most_overdue_first():
    net = BatchedMLP(MLPSpec((6, 8, 3)), SEEDS[:1])
    method = snr_on(net, 1, seeds=SEEDS[:1], initial_threshold=3, tau_max=50, tau_min=1, max_reset_fraction=0.2)
    assert method.k == [2]
    method.state[0]["tau"][0, :] = torch.tensor([3.0, 2, 3, 3, 2, 3, 1.5, 3])
    h = torch.ones(1, 1, 8)
    h[0, 0, [1, 4, 6]] = -1.0  # units 1, 4, 6 silent from now on
    with torch.no_grad():
        net.layers[0].bias.fill_(1.0)
    method.after_step(StepInfo(0, 0, [h]))  # ages 1: nobody due
    method.after_step(StepInfo(1, 0, [h]))  # ages 2: all three due, a/τ = 1, 1, 4/3: only K = 2 reset
    ages, bias = method.state[0]["age"][0], net.layers[0].bias[0]
    assert ages.tolist() == [0, 0, 0, 0, 2, 0, 0, 0] and bias.eq(0).tolist() == [i in (1, 6) for i in range(8)]
    method.after_step(StepInfo(2, 0, [h]))  # unit 4 (a/τ = 3/2) goes next; 1 and 6 are at 1/2, 1/1.5
    assert method.state[0]["age"][0].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
    assert net.layers[0].bias[0, 4] == 0 and method.state[0]["hist"][0, 4, 2] == 1  # its spell of 3 recorded


def test_conv_channels_fire_anywhere_and_a_silent_channel_is_reset_with_its_batchnorm():
    seeds = torch.tensor([5])
    net = BatchedResNet18(seeds, num_classes=10)
    method = snr_on(net, 2, seeds=seeds, initial_threshold=4, tau_max=20, tau_min=2, max_reset_fraction=0.0)
    _, features = net(torch.randn(1, 2, 3, 8, 8))
    features = [f.detach().clone() for f in features]
    features[0][:, :, 3] = 0.0  # stem channel 3 silent everywhere
    features[0][:, 1, 4] = -1.0
    features[0][0, 1, 4, 5, 6] = 2.0  # channel 4: one positive position of one example -> fires
    with torch.no_grad():
        net.bn1.weight.fill_(0.5)
    for step in range(2):
        method.after_step(StepInfo(step, 0, features))
    ages = method.state[0]["age"][0]
    assert ages[3] == 0 and ages[4] == 0 and net.bn1.weight[0, 3] == 1.0 and net.bn1.weight[0, 4] == 0.5
    assert torch.equal(net.layer1[0].conv1.weight[0, :, 3], torch.zeros(64, 3, 3))


def test_convnet_flattened_conv3_owns_four_fc1_columns():
    net = BatchedConvNet(SEEDS[:1])
    method = snr_on(net, 4, seeds=SEEDS[:1], initial_threshold=4, tau_max=40, tau_min=4, max_reset_fraction=1.0)
    _, features = net(torch.randn(1, 4, 3, 32, 32))
    features = [f.detach().clone() for f in features]
    features[2].view(1, 4, 128, 4)[:, :, 7] = 0.0
    method.after_step(StepInfo(0, 0, features))
    assert method.state[2]["age"][0, 7] == 0
    # zeroed, except in the rows of fc1 units reset after it (layer by layer, as the official code)
    kept = (features[3][0] > 0).any(0)
    assert 0 < kept.sum() < 128 and net.fc1.bias[0, ~kept].eq(0).all()
    assert torch.equal(net.fc1.weight[0, kept, 28:32], torch.zeros(int(kept.sum()), 4))
    assert (net.fc1.weight[0, ~kept, 28:32] != 0).all()


def test_seed_alone_equals_seed_beside_others_and_resume():
    features = [[torch.where(torch.rand(3, 2, n) < 0.2, 1.0, -1.0) for n in (8, 7)] for _ in range(30)]
    hp = {**SMALL, "max_reset_fraction": 0.2}
    nets, methods = {}, {}
    for name, seeds in (("together", SEEDS), ("alone", SEEDS[2:])):
        nets[name] = BatchedMLP(MLPSpec((6, 8, 7, 3)), seeds)
        methods[name] = snr_on(nets[name], 2, seeds=seeds, **hp)
        for step, f in enumerate(features[:20]):
            if step == 10:
                methods[name].on_task_start(1)
            methods[name].after_step(StepInfo(step, 0, [x[3 - seeds.numel():] for x in f]))
    for a, b in zip(nets["together"].parameters(), nets["alone"].parameters()):
        assert torch.equal(a[2:], b)
    # resume: a fresh method loaded from the state continues exactly as the original
    saved = methods["alone"].state_dict()
    twin_net = BatchedMLP(MLPSpec((6, 8, 7, 3)), SEEDS[2:])
    twin_net.load_state_dict(nets["alone"].state_dict())
    twin = snr_on(twin_net, 2, seeds=SEEDS[2:], **hp)
    twin.load_state_dict(saved)
    for step, f in enumerate(features[20:], start=20):
        for m in (methods["alone"], twin):
            m.after_step(StepInfo(step, 1, [x[2:] for x in f]))
    for a, b in zip(methods["alone"].state, twin.state):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a, b) for a, b in zip(nets["alone"].parameters(), twin_net.parameters()))


def test_hyperparameters_are_checked():
    net = BatchedMLP(MLPSpec((6, 4, 3)), SEEDS)
    with pytest.raises(ValueError, match="tau_max"):
        snr_on(net, 100, tau_max=50)


def test_default_resets_every_due_unit_in_one_step_as_the_official_rule():
    """Issue 11: the default has no cap (ρ ≥ 1, K = n): 200 units due at once are all reset in that step."""
    assert SelfNormalizedResets.defaults["max_reset_fraction"] >= 1
    net = BatchedMLP(MLPSpec((6, 200, 3)), SEEDS)
    method = snr_on(net, 1, initial_threshold=1, tau_min=1, tau_max=40)  # max_reset_fraction: the default
    assert method.k == [200]  # the uncapped path
    before = net.layers[0].weight.detach().clone()
    method.after_step(StepInfo(0, 0, [-torch.ones(3, 1, 200)]))  # every unit silent: age 1 ≥ τ = 1
    assert torch.equal(method.state[0]["age"], torch.zeros(3, 200, dtype=torch.int64))
    assert (net.layers[0].weight.detach() != before).any(-1).all()  # every unit got fresh weights
    assert net.layers[1].weight.detach().eq(0).all()


@pytest.mark.parametrize("shape", ["dense", "conv", "flat_conv"])
def test_crelu_unit_fires_when_its_preactivation_is_positive(shape):
    """The official test is z > 0 on the pre-activation; a CReLU unit whose z < 0 everywhere has
    relu(−z) > 0 but has not fired (z ≠ 0 would count it as firing)."""
    from types import SimpleNamespace

    from plastibench.methods.snr import fired
    from plastibench.nn import crelu

    n = 6
    z = {"dense": torch.randn(2, 5, n), "conv": torch.randn(2, 5, n, 3, 3), "flat_conv": torch.randn(2, 5, n, 2, 2)}[shape]
    z[:, :, :3] = -z[:, :, :3].abs() - 0.1  # units 0-2 never positive
    z[:, :, 4] = 0.0  # unit 4 exactly zero everywhere
    h = crelu(z)
    if shape == "flat_conv":
        h = h.flatten(2)  # a flattened conv channel owns 2·H·W consecutive inputs
    group = SimpleNamespace(n_units=n, activation="crelu")
    expect = (z > 0).flatten(3).any(-1).any(1) if z.dim() > 3 else (z > 0).any(1)
    assert torch.equal(fired(h, group), expect)
    assert not fired(h, group)[:, [0, 1, 2, 4]].any()
    relu_group = SimpleNamespace(n_units=n, activation="relu")
    assert torch.equal(fired(torch.relu(z).flatten(2) if shape == "flat_conv" else torch.relu(z), relu_group), expect)
