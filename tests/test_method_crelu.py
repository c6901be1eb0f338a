"""``crelu``: φ(z) = [relu(z), relu(−z)] at every hidden layer, widths matched to the base parameter count."""

import pytest
import torch

from plastibench import rng
from plastibench.method import RunContext
from plastibench.methods.crelu import convnet_parameters, mlp_parameters, resnet_parameters
from plastibench.nn import BatchedMLP, MLPSpec, crelu
from plastibench.registry import METHODS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])
META = torch.zeros(1, dtype=torch.int64, device="meta")  # shapes only: counting needs no values


@pytest.fixture
def shapes_only(monkeypatch):
    """Initial draws as zeros of the drawn shape, for tests that count parameters: on the meta device
    each of the counter-based hash's ~30 element-wise ops runs Python shape code (1.4 s a ResNet)."""
    def zeros(seeds, step, purpose, shape, *args, **kwargs):
        return torch.zeros(seeds.numel(), *shape, device=seeds.device)

    monkeypatch.setattr(rng, "uniform", zeros)
    monkeypatch.setattr(rng, "normal", zeros)


def configure(net, seeds=SEEDS, **overrides):
    cls = METHODS.get("crelu")
    method = cls(cls.hparams_for("pmnist", overrides), RunContext(seeds=seeds, task="pmnist", protocol=None))
    return method.configure_network(net)


def n_parameters(net) -> int:
    return sum(p[0].numel() for p in net.parameters())


def by_hand_crelu(z: torch.Tensor) -> torch.Tensor:
    out = torch.empty(z.shape[0], z.shape[1], 2 * z.shape[2], *z.shape[3:])
    out[:, :, 0::2], out[:, :, 1::2] = torch.relu(z), torch.relu(-z)
    return out


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 6, 6)])
def test_crelu_is_relu_and_relu_of_minus_interleaved_per_unit(shape):
    z = torch.randn(*shape)
    y = crelu(z)
    assert y.shape == (shape[0], shape[1], 2 * shape[2], *shape[3:])
    assert torch.equal(y[:, :, 0::2], torch.relu(z)) and torch.equal(y[:, :, 1::2], torch.relu(-z))
    assert torch.equal(y[:, :, 0::2] - y[:, :, 1::2], z)  # nothing is lost: z = relu(z) − relu(−z)


def test_mlp_forward_is_crelu_of_each_hidden_preactivation():
    net = configure(BatchedMLP(MLPSpec((10, 12, 12, 3)), SEEDS))
    assert net.activation_name == "crelu"
    x = torch.randn(2, 4, 10)
    out, features = net(x)
    h = x
    for i, layer in enumerate(net.layers[:-1]):
        h = by_hand_crelu(torch.baddbmm(layer.bias.unsqueeze(1), h, layer.weight.transpose(1, 2)))
        torch.testing.assert_close(features[i], h)
    last = net.layers[-1]
    torch.testing.assert_close(out, torch.baddbmm(last.bias.unsqueeze(1), h, last.weight.transpose(1, 2)))


# (network, base widths, CReLU widths of the docstring's table, relative tolerance on parameters)
CASES = {
    "pmnist-mlp": (lambda s, a="relu", w=(2000,) * 3: BatchedMLP(MLPSpec((784, *w, 10), a), s), (1451,) * 3, 0.005),
    "scr-mlp": (lambda s, a="relu", w=(5,): BatchedMLP(MLPSpec((20, *w, 1), a), s), (5,), 0.05),
    "convnet": (lambda s, a="relu", w=BatchedConvNet.WIDTHS: BatchedConvNet(s, 2, a, w), (23, 45, 91, 91, 91), 0.005),
    "resnet18": (lambda s, a="relu", w=BatchedResNet18.WIDTHS: BatchedResNet18(s, 100, a, w),
                 (45, 90, 181, 362), 0.005),
}


@pytest.mark.parametrize("name", CASES)
def test_parameter_count_within_tolerance_of_the_base_net(name, shapes_only):
    make, widths, tolerance = CASES[name]
    base, net = make(META), configure(make(META), seeds=META)
    assert net.activation_name == "crelu"
    units = [g.n_units for g in net.unit_groups()]
    if name == "resnet18":  # per stage: the first block's conv1
        units = [getattr(net, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)]
    assert tuple(units) == widths
    assert abs(n_parameters(net) / n_parameters(base) - 1) <= tolerance
    same = configure(make(META), seeds=META, widths="same")
    assert [g.n_units for g in same.unit_groups()] == [g.n_units for g in base.unit_groups()]


def test_parameter_formulas_count_the_built_nets(shapes_only):
    for f, act in ((1, "relu"), (2, "crelu")):
        w = (7, 5, 3)
        assert mlp_parameters((9, *w, 4), f) == n_parameters(BatchedMLP(MLPSpec((9, *w, 4), act), META))
        w = (3, 5, 7, 4, 6)
        assert convnet_parameters(w, 3, f) == n_parameters(BatchedConvNet(META, 3, act, w))
        w = (3, 5, 7, 4)  # lpcifar10's net: two 5x5 convs without a nonlinearity
        assert convnet_parameters(w, 3, f, (5, 5), False) == n_parameters(
            BatchedConvNet(META, 3, act, w, kernels=(5, 5), conv_activation=False))
        for w in ((4, 8, 8, 16), (6, 6, 6, 6)):
            assert resnet_parameters(w, 10, f) == n_parameters(BatchedResNet18(META, 10, act, w))


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_a_unit_owns_both_its_outputs_in_the_next_layer(kind):
    """After ``reinitialise`` zeroes a unit's outgoing weights (2 columns, or 2·H·W for conv3 → fc1),
    the output no longer depends on that unit's incoming weights."""
    torch.manual_seed(0)
    if kind == "mlp":
        net, x = BatchedMLP(MLPSpec((6, 8, 8, 3), "crelu"), SEEDS), torch.randn(2, 4, 6)
    else:
        net, x = BatchedConvNet(SEEDS, 2, "crelu", (4, 6, 8, 8, 8)), torch.randn(2, 4, 3, 32, 32)
    groups = net.unit_groups()
    assert [g.outgoing_weight.group for g in groups] == ([2, 2] if kind == "mlp" else [2, 2, 8, 2, 2])
    for g in groups:
        idx, valid = torch.tensor([[1], [3]]), torch.ones(2, 1, dtype=torch.bool)
        g.reinitialise(idx, valid, g.incoming_weight.gather(idx) * 0.5)
        before = net(x)[0]
        with torch.no_grad():
            g.incoming_weight.assign(idx, valid, 3.0)
            g.incoming_bias.assign(idx, valid, 1.0)
        torch.testing.assert_close(net(x)[0], before, rtol=0, atol=0)
        cols = g.outgoing_weight.param.shape[2] // g.n_units
        assert torch.all(g.outgoing_weight.param[0, :, cols:2 * cols] == 0)
        assert torch.any(g.outgoing_weight.param[0, :, :cols] != 0)


def test_resnet_block_skip_adds_the_relu_half_and_convs_read_both_halves():
    net = BatchedResNet18(SEEDS, 5, "crelu", (4, 8, 8, 8))
    x = torch.randn(2, 3, 3, 8, 8)
    out, features = net(x)
    assert out.shape == (2, 3, 5) and len(features) == 17 == len(net.unit_groups())
    assert all(f.shape[2] == 2 * g.n_units for f, g in zip(features, net.unit_groups()))
    block = net.layer1[0]  # identity skip
    assert block.downsample is None and block.conv1.in_channels == 8
    h = features[0]
    mid = by_hand_crelu(block.bn1(block.conv1(h)))
    torch.testing.assert_close(features[1], mid)
    torch.testing.assert_close(features[2], by_hand_crelu(block.bn2(block.conv2(mid)) + torch.relu(
        h[:, :, 0::2] - h[:, :, 1::2])))
    assert net.layer2[0].downsample[0].in_channels == 8  # a 1x1 downsample reads both halves too
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_refuses_a_net_that_already_uses_crelu():
    with pytest.raises(ValueError):
        configure(BatchedMLP(MLPSpec((4, 3, 1), "crelu"), SEEDS))
