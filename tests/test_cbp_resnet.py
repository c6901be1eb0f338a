"""CBP's ResGnT variant on the CIFAR ResNet-18 against a per-seed restatement of ResGnT.

Reference: ``lop/algos/res_gnt.py::ResGnT`` (``get_weight_layers``, ``test_features``,
``gen_new_features``, ``compute_std``) as called by ``lop/incremental_cifar/incremental_cifar_experiment.py``
(``optim.step()``, then ``resgnt.gen_and_test(current_features)``, decay 0.99, ReLU). ``RefResGnT``
below restates its rules for ONE seed with plain tensors: a cumulative feature magnitude with no
decay factor that a replacement does not reset, the "layer" count (once a unit is mature,
acc += ρ·n; k = int(acc); acc -= k), a utility computed only when k > 0, and the k smallest among
the mature units (ties to the lowest index, our documented choice; ``topk`` promises no order).
The hidden layers are found as ResGnT finds them, walking the modules and skipping ``downsample``,
independently of ``BatchedResNet18.unit_groups()``. After every step the test checks what
``gen_new_features`` writes: incoming filters from N(0, 2/fan_in) (our counter-based draw), bias 0,
the next conv's input channel / the fc's column zeroed, the layer's BN channel reset to weight 1,
bias 0, running mean 0, running variance 1, and nothing else touched (momentum included, unless
``reset_optimizer_state``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from plastibench import rng
from plastibench.method import HyperparameterError, RunContext, StepInfo
from plastibench.methods.cbp import ContinualBackprop
from plastibench.nn import BatchedLinear, BatchedMLP, MLPSpec
from plastibench.vision import BatchedBatchNorm2d, BatchedConv2d, BatchedResNet18

SEEDS = torch.tensor([3, 7])
HP = {"variant": "resgnt", "replacement_rate": 0.02, "maturity_threshold": 2, "decay_rate": 0.9,
      "utility": "contribution", "count_rule": "layer", "init": "kaiming_normal",
      "next_bias_correction": False, "reset_optimizer_state": False}


@pytest.fixture(scope="module")
def resnet() -> BatchedResNet18:
    return BatchedResNet18(SEEDS, num_classes=10)


def resgnt_layers(net: torch.nn.Module) -> tuple[list[torch.nn.Module], list[BatchedBatchNorm2d]]:
    """``ResGnT.get_weight_layers``: conv/linear layers and BNs in module order, downsample skipped."""
    weights, bns = [], []

    def walk(module):
        if isinstance(module, (BatchedConv2d, BatchedLinear)):
            weights.append(module)
        elif isinstance(module, BatchedBatchNorm2d):
            bns.append(module)
        else:
            for child in module.children():
                if getattr(module, "downsample", None) is child:
                    continue
                walk(child)

    walk(net)
    return weights, bns


class RefResGnT:
    """ResGnT's ``test_features`` for one seed."""

    def __init__(self, sizes: list[int], hp: dict):
        self.hp = hp
        self.age = [torch.zeros(n) for n in sizes]
        self.mag = [torch.zeros(n, dtype=torch.float64) for n in sizes]
        self.acc = [0.0 for _ in sizes]

    def step(self, i: int, nxt: torch.Tensor, h: torch.Tensor) -> list[int]:
        """Layer i with next-layer weight ``nxt`` and feature ``h`` (``[B, C, H, W]`` or ``[B, C]``);
        returns the chosen units, in ascending utility."""
        self.age[i] += 1
        h = h.double()
        dims = (0, 2, 3) if h.dim() == 4 else (0,)
        self.mag[i] += (1 - self.hp["decay_rate"]) * h.abs().mean(dim=dims)
        eligible = torch.where(self.age[i] > self.hp["maturity_threshold"])[0]
        if len(eligible) == 0:
            return []
        self.acc[i] += self.hp["replacement_rate"] * self.age[i].numel()
        k = int(self.acc[i])
        self.acc[i] -= k
        if k == 0:
            return []
        out = nxt.double().abs().mean(dim=(0, 2, 3) if nxt.dim() == 4 else 0)
        util = out * self.mag[i] if self.hp["utility"] == "contribution" else out
        chosen = eligible[torch.sort(util[eligible], stable=True).indices[:k]]
        self.age[i][chosen] = 0
        return chosen.tolist()


def make(net: torch.nn.Module, seeds: torch.Tensor, **overrides):
    ctx = RunContext(seeds=seeds, task="icifar100", protocol=None)
    cbp = ContinualBackprop({**HP, **overrides}, ctx)
    net = cbp.configure_network(net)
    ctx.net = net
    ctx.optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return cbp, ctx.optimizer


@pytest.mark.parametrize("utility, steps, reset", [("contribution", 5, False), ("weight", 4, True)])
def test_resgnt_on_resnet_follows_the_reference(resnet, utility, steps, reset):
    net = copy.deepcopy(resnet).train()
    cbp, opt = make(net, SEEDS, utility=utility, reset_optimizer_state=reset)
    weights, bns = resgnt_layers(net)
    assert len(weights) == 18 and len(bns) == 17
    # unit_groups() pairs hidden layer i with weight layer i+1 and BN i, as ResGnT
    for i, g in enumerate(cbp.groups):
        assert g.incoming_weight.param is weights[i].weight and g.outgoing_weight.param is weights[i + 1].weight
        resets = {id(r.part.param): r.value for r in g.norm}
        assert [resets.get(id(getattr(bns[i], k))) for k in ("weight", "bias", "running_mean", "running_var")] == [
            1.0, 0.0, 0.0, 1.0]
    refs = [RefResGnT([g.n_units for g in cbp.groups], {**HP, "utility": utility}) for _ in SEEDS]
    normalised, replaced, bn_moved = [], 0, 0
    for step in range(steps):
        x = rng.normal(SEEDS, step, "test/x", (4, 3, 8, 8))
        y = rng.hash32(SEEDS, step, "test/y", (4,)) % 10
        out, features = net(x)
        assert len(features) == 17 and features[-1].shape == (2, 4, 512)
        loss = F.cross_entropy(out.reshape(8, 10), y.reshape(-1), reduction="none").view(2, 4).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w = [layer.weight.detach().clone() for layer in weights]
        b = [layer.bias.detach().clone() for layer in weights]
        bn = [{k: getattr(m, k).detach().clone() for k in ("weight", "bias", "running_mean", "running_var")}
              for m in bns]
        momenta = [opt.state[layer.weight]["momentum_buffer"].clone() for layer in weights]
        expected = [[refs[s].step(i, w[i + 1][s], features[i][s].detach()) for i in range(17)] for s in range(2)]
        cbp.after_step(StepInfo(step, 0, [f.detach() for f in features]))
        for i, group in enumerate(cbp.groups):
            state = cbp.state[i]
            std = math.sqrt(2.0 / group.fan_in)
            k_max = cbp.draws[i]["init"].shape[0]
            draws = rng.normal(SEEDS, step, f"cbp/{group.name}/normal", (k_max, group.fan_in), std)
            for s in range(2):
                chosen = expected[s][i]
                assert sorted(torch.where(state["age"][s] == 0)[0].tolist()) == sorted(chosen), (step, s, group.name)
                # the cumulative magnitude: no decay factor, not reset for replaced units
                torch.testing.assert_close(state["feature_mag"][s].double(), refs[s].mag[i], rtol=1e-5, atol=1e-9)
                others = sorted(set(range(group.n_units)) - set(chosen))
                next_fresh = set(expected[s][i + 1]) if i + 1 < 17 else set()
                if chosen:
                    replaced += len(chosen)
                    new = weights[i].weight[s][chosen].flatten(1)
                    # N(0, 2/fan_in), the counter-based draw of (seed, step, layer); row r for the r-th smallest utility
                    torch.testing.assert_close(new, draws[s, :len(chosen)], rtol=0, atol=1e-6)
                    normalised.append(new.flatten() / std)
                    assert torch.count_nonzero(weights[i].bias[s][chosen]) == 0
                    bn_moved += int(torch.count_nonzero(bn[i]["running_mean"][s][chosen]))
                    assert (bns[i].weight[s][chosen] == 1).all() and (bns[i].bias[s][chosen] == 0).all()
                    assert (bns[i].running_mean[s][chosen] == 0).all() and (bns[i].running_var[s][chosen] == 1).all()
                    # outgoing: the next conv's input channel j / the fc's column j, except rows of
                    # next-layer units replaced in this same step, which hold their fresh weights
                    kept = [o for o in range(weights[i + 1].weight.shape[1]) if o not in next_fresh]
                    assert torch.count_nonzero(weights[i + 1].weight[s][kept][:, chosen]) == 0
                    if reset:  # the option zeroes the momentum of the unit's incoming and outgoing weights
                        m_in, m_out = (opt.state[weights[i + d].weight]["momentum_buffer"][s] for d in (0, 1))
                        assert torch.count_nonzero(m_in[chosen]) == 0 and torch.count_nonzero(m_out[:, chosen]) == 0
                if not reset:  # ResGnT never touches SGD's momentum
                    assert torch.equal(opt.state[weights[i].weight]["momentum_buffer"], momenta[i])
                # units not chosen keep their incoming row (up to columns zeroed by layer i-1), bias and BN
                cols = sorted(set(range(weights[i].weight.shape[2])) - set(expected[s][i - 1] if i > 0 else []))
                assert torch.equal(weights[i].weight[s][others][:, cols], w[i][s][others][:, cols])
                assert torch.equal(weights[i].bias[s][others], b[i][s][others])
                for k in bn[i]:
                    assert torch.equal(getattr(bns[i], k)[s][others], bn[i][k][s][others]), k
        assert torch.equal(weights[17].bias, b[17])
    assert replaced > 50 * (steps - 2) and bn_moved > 0.9 * replaced
    z = torch.cat(normalised)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02  # a uniform U(±√(1/fan_in)) would give 0.41


def test_resgnt_seed_alone_equals_seed_beside_others(resnet):
    """Seed 7 alone and beside seed 3, fed the same features: bit-identical parameters and state."""
    both = copy.deepcopy(resnet)
    alone = copy.deepcopy(resnet)
    with torch.no_grad():
        for t in list(alone.parameters()) + list(alone.buffers()):
            t.data = t.data[1:2].clone()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in copy.deepcopy(resnet).eval()(torch.zeros(2, 4, 3, 8, 8))[1]]
    runs = [make(both, SEEDS)[0], make(alone, SEEDS[1:])[0]]
    for step in range(4):
        for cbp, seeds in zip(runs, (SEEDS, SEEDS[1:])):
            feats = [rng.uniform(seeds, step, f"test/h{i}", shape) for i, shape in enumerate(shapes)]
            cbp.after_step(StepInfo(step, 0, feats))
    for (name, p), q in zip(both.state_dict().items(), alone.state_dict().values()):
        assert torch.equal(p[1:2], q), name
    for mine, theirs in zip(runs[0].state, runs[1].state):
        for k in mine:
            assert torch.equal(mine[k][1:2], theirs[k]), k
    assert any((s["age"] == 0).any() for s in runs[1].state[:3]), "units were replaced"


def test_task_defaults():
    cifar = ContinualBackprop.hparams_for("icifar100")
    assert {k: cifar[k] for k in HP if k not in ("next_bias_correction", "reset_optimizer_state")} == {
        "variant": "resgnt", "replacement_rate": 1e-5, "maturity_threshold": 1000, "decay_rate": 0.99,
        "utility": "contribution", "count_rule": "layer", "init": "kaiming_normal"}
    imagenet = ContinualBackprop.hparams_for("cimagenet")
    assert (imagenet["variant"], imagenet["replacement_rate"], imagenet["maturity_threshold"], imagenet["decay_rate"],
            imagenet["utility"], imagenet["count_rule"], imagenet["init"]) == (
        "gnt", 3e-4, 100, 0.99, "adaptable_contribution", "layer", "default")
    assert ContinualBackprop.hparams_for("scr")["variant"] == "gnt"


@pytest.mark.parametrize("overrides, match", [
    ({"utility": "adaptable_contribution"}, "utilities"),
    ({"init": "kaiming"}, "kaiming_normal"),
    ({"next_bias_correction": True}, "bias correction"),
    ({"variant": "gnt", "utility": "weight", "init": "kaiming"}, "weight"),
    ({"variant": "gnt", "utility": "contribution"}, "kaiming_normal"),
])
def test_variant_mismatches_are_refused(overrides, match):
    seeds = torch.tensor([0])
    cbp = ContinualBackprop({**HP, **overrides}, RunContext(seeds=seeds, task="x", protocol=None))
    with pytest.raises(HyperparameterError, match=match):
        cbp.configure_network(BatchedMLP(MLPSpec((3, 4, 2)), seeds))
