"""``lnwd``: a per-seed LayerNorm on every hidden pre-activation, and the optimizer's weight decay."""

import tempfile

import pytest
import torch
import torch.nn.functional as F

from plastibench.engine import Engine
from plastibench.method import RunContext
from plastibench.nn import BatchedLayerNorm, BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])
NETS = {  # the ResNet-18's structure at a fraction of its widths, to keep the test fast
    "mlp": (lambda: BatchedMLP(MLPSpec((6, 16, 16, 3)), SEEDS), (6,)),
    "convnet": (lambda: BatchedConvNet(SEEDS), (3, 32, 32)),
    "resnet": (lambda: BatchedResNet18(SEEDS, num_classes=5, widths=(8, 16, 16, 16)), (3, 8, 8)),
}


def configure(net):
    cls = METHODS.get("lnwd")
    return cls(cls.hparams_for("pmnist"), RunContext(seeds=SEEDS, task="pmnist", protocol=None)).configure_network(net)


def captured(net, x):
    """(pre-activation entering each LN, LN output) for every site, from one forward."""
    seen = []
    hooks = [norm.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for norm in net.pre_norms]
    features = net(x)[1]
    for h in hooks:
        h.remove()
    return seen, features


@pytest.mark.parametrize("kind", NETS)
def test_every_hidden_preactivation_is_normalised_per_seed_and_example(kind):
    make, shape = NETS[kind]
    net = configure(make())
    groups = net.unit_groups()
    assert len(net.pre_norms) == len(groups)
    with torch.no_grad():  # per-seed, per-unit gains and offsets [S, units]
        for norm, g in zip(net.pre_norms, groups):
            assert norm.weight.shape == norm.bias.shape == (2, g.n_units)
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, *shape, generator=torch.Generator().manual_seed(0))
    seen, features = captured(net, x)
    assert len(seen) == len(groups) == len(features)
    for (z, y), norm in zip(seen, net.pre_norms):
        for s in range(2):
            # torch's LayerNorm over (units,) / GroupNorm(1, C) over (C, H, W), with seed s's affine
            ref = (F.layer_norm(z[s], z.shape[2:], None, None, 1e-5) if z.dim() == 3 else
                   F.group_norm(z[s], 1, None, None, 1e-5))
            shape_ = (1, -1) + (1,) * (z.dim() - 3)
            torch.testing.assert_close(y[s], ref * norm.weight[s].view(shape_) + norm.bias[s].view(shape_),
                                       rtol=1e-5, atol=1e-5)
            flat = ((y[s] - norm.bias[s].view(shape_)) / norm.weight[s].view(shape_)).flatten(1)
            torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
            torch.testing.assert_close(flat.var(1, correction=0), torch.ones(4), atol=2e-3, rtol=0)


def test_activation_follows_the_norm_and_resets_include_gain_and_offset():
    net = configure(NETS["mlp"][0]())
    x = torch.randn(2, 4, 6)
    seen, features = captured(net, x)
    torch.testing.assert_close(features[0], torch.relu(seen[0][1]))
    g = net.unit_groups()[0]
    with torch.no_grad():
        net.pre_norms[0].weight.fill_(3.0), net.pre_norms[0].bias.fill_(2.0)
    idx, valid = torch.tensor([[2], [5]]), torch.tensor([[True], [False]])
    g.reinitialise(idx, valid, g.incoming_weight.gather(idx))
    assert net.pre_norms[0].weight[0, 2] == 1.0 and net.pre_norms[0].bias[0, 2] == 0.0
    assert net.pre_norms[0].weight[1, 5] == 3.0 and net.pre_norms[0].bias[1, 5] == 2.0


def test_weight_decay_reaches_the_optimizer_and_the_step():
    cls, task = METHODS.get("lnwd"), TASKS.get("scr")
    engine = Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                    device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    group = engine.optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-3 == cls.hparams_for("scr")["weight_decay"]
    assert any(isinstance(m, BatchedLayerNorm) for m in engine.net.modules())
    in_optimizer = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in engine.net.pre_norms.parameters())
    engine.task.start_task(0)
    before = [p.detach().clone() for p in engine.net.parameters()]
    engine._step(0, 0)
    lr = group["lr"]
    assert group["momentum"] == 0  # plain SGD on scr: θ ← θ − α(g + λθ)
    for p, old in zip(engine.net.parameters(), before):
        torch.testing.assert_close(p.detach(), old - lr * (p.grad + 1e-3 * old), rtol=1e-5, atol=1e-7)


def test_resnet_norms_sit_after_the_bns_and_after_the_residual_sum():
    make, shape = NETS["resnet"]
    net = configure(make())
    x = torch.randn(2, 3, *shape)
    seen, features = captured(net, x)
    block = net.layer1[0]
    torch.testing.assert_close(seen[0][0], net.bn1(net.conv1(x)))
    torch.testing.assert_close(seen[1][0], block.bn1(block.conv1(features[0])))
    torch.testing.assert_close(seen[2][0], block.bn2(block.conv2(features[1])) + features[0])
    for (_, y), h in zip(seen[:-1], features[:-1]):
        torch.testing.assert_close(h, torch.relu(y))
