"""CBP on the Continual ImageNet ConvNet against a per-seed restatement of ConvGnT.

Reference: ``lop/algos/convGnT.py::ConvGnT`` (``update_utility``, ``test_features``,
``gen_new_features``) and ``lop/utils/miscellaneous.py::get_layer_bound``. The restatement below
loops over seeds and uses plain per-seed tensors; the batched CBP must choose the same units, keep
the same utilities, and re-initialise as ConvGnT does (conv filters from U(±√(1/fan_in)) whatever ``init`` says, the
conv3 -> fc1 channel owning fc1 columns 4c..4c+3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plastibench.method import RunContext, StepInfo
from plastibench.methods.cbp import ContinualBackprop
from plastibench.vision import BatchedConvNet

HP = {"replacement_rate": 0.02, "maturity_threshold": 2, "decay_rate": 0.9, "utility": "adaptable_contribution",
      "count_rule": "layer", "init": "kaiming", "next_bias_correction": False, "reset_optimizer_state": False}


class RefConvGnT:
    """ConvGnT's testing rules for one seed, restated."""

    def __init__(self, sizes: list[int], hp: dict):
        self.hp = hp
        self.age = [torch.zeros(n) for n in sizes]
        self.util = [torch.zeros(n) for n in sizes]
        self.mean = [torch.zeros(n) for n in sizes]
        self.acc = [0.0 for _ in sizes]

    def step(self, i: int, cur: torch.Tensor, nxt: torch.Tensor, h: torch.Tensor) -> list[int]:
        eta, n = self.hp["decay_rate"], self.age[i].numel()
        self.age[i] += 1
        corr = 1 - eta ** self.age[i]
        out = nxt.abs().mean(0) if nxt.dim() == 2 else nxt.abs().mean((0, 2, 3))
        inp = cur.abs().flatten(1).mean(1)
        flat_to_fc = cur.dim() == 4 and nxt.dim() == 2
        if h.dim() == 4:
            channel_mean = h.mean((0, 2, 3))
        elif flat_to_fc:
            channel_mean = h.mean(0).view(-1, 4).mean(1)
        else:
            channel_mean = h.mean(0)
        self.mean[i] = eta * self.mean[i] + (1 - eta) * channel_mean
        f = self.mean[i] / corr
        if h.dim() == 4:
            y = out * (h - f.view(1, -1, 1, 1)).abs().mean((0, 2, 3))
        elif flat_to_fc:
            y = (out * (h - f.repeat_interleave(4).view(1, -1)).abs().mean(0)).view(-1, 4).mean(1)
        else:
            y = out * (h - f).abs().mean(0)
        self.util[i] = eta * self.util[i] + (1 - eta) * y / inp
        corrected = self.util[i] / corr
        eligible = torch.where(self.age[i] > self.hp["maturity_threshold"])[0]
        if len(eligible) == 0:
            return []
        self.acc[i] += self.hp["replacement_rate"] * n
        k = int(self.acc[i])
        self.acc[i] -= k
        if k == 0:
            return []
        # ConvGnT takes topk(-u); with exact ties (dead units, utility 0) we break toward the lowest index
        chosen = eligible[torch.sort(corrected[eligible], stable=True).indices[:k]]
        self.util[i][chosen] = 0
        self.mean[i][chosen] = 0
        self.age[i][chosen] = 0
        return sorted(chosen.tolist())


def test_cbp_on_convnet_follows_convgnt():
    torch.manual_seed(0)
    seeds = torch.tensor([3, 7])
    net = BatchedConvNet(seeds)
    ctx = RunContext(seeds=seeds, task="cimagenet", protocol=None)
    cbp = ContinualBackprop(HP, ctx)
    net = cbp.configure_network(net)
    ctx.net = net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    ctx.optimizer = opt
    layers = net.weight_layers()
    refs = [RefConvGnT([g.n_units for g in cbp.groups], HP) for _ in range(2)]
    replaced_any = 0
    for step in range(12):
        x = torch.rand(2, 4, 3, 32, 32)
        y = torch.randint(0, 2, (2, 4))
        out, features = net(x)
        loss = F.cross_entropy(out.reshape(8, 2), y.reshape(-1), reduction="none").view(2, 4).mean(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = [layer.weight.detach().clone() for layer in layers]
        expected = [[refs[s].step(i, before[i][s], before[i + 1][s], features[i][s].detach())
                     for i in range(5)] for s in range(2)]
        cbp.after_step(StepInfo(step, 0, [f.detach() for f in features]))
        for s in range(2):
            for i, group in enumerate(cbp.groups):
                state = cbp.state[i]
                ours = sorted(torch.where(state["age"][s] == 0)[0].tolist())
                assert ours == expected[s][i], (step, s, group.name)
                torch.testing.assert_close(state["util"][s], refs[s].util[i], rtol=1e-4, atol=1e-7)
                for j in ours:
                    replaced_any += 1
                    w = layers[i].weight[s, j]
                    assert (w - before[i][s, j]).abs().max() > 0
                    # conv filters: U(±√(1/fan_in)) whatever `init` says; linear units: kaiming
                    conv = layers[i].weight.dim() == 5
                    bound = math.sqrt((1.0 if conv else 6.0) / group.fan_in)
                    assert w.abs().max() <= bound
                    assert not conv or w.abs().max() > 0.5 * bound
                    cols = [j] if group.outgoing_weight.group == 1 else list(range(4 * j, 4 * j + 4))
                    # rows of next-layer units replaced in this same step hold their fresh weights
                    kept = [r for r in range(layers[i + 1].weight.shape[1])
                            if i + 1 == len(cbp.groups) or r not in expected[s][i + 1]]
                    assert torch.count_nonzero(layers[i + 1].weight[s][kept][:, cols]) == 0
    assert replaced_any > 20


def test_next_bias_correction_is_refused_on_conv_nets():
    """The paper's bias correction moves W_out[:, j]·f_j into a linear next layer's bias only."""
    import pytest

    from plastibench.method import HyperparameterError

    seeds = torch.tensor([0])
    cbp = ContinualBackprop({**HP, "next_bias_correction": True}, RunContext(seeds=seeds, task="x", protocol=None))
    with pytest.raises(HyperparameterError, match="fully connected"):
        cbp.configure_network(BatchedConvNet(seeds))
