"""``parseval``: the term is λ·Σ_l (64/n_l)²·‖W_l W_lᵀ − s_l·I‖²_F over every weight but the output
layer's (conv kernels as [out, in·k·k]), per seed, and its gradient moves W Wᵀ toward s_l·I; by
default s_l is the layer's initial mean squared row norm (per seed), so the term keeps the network's
own scale."""


import pytest
import torch

from plastibench.method import RunContext
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])


def fast_resnet18(seeds):
    """A BatchedResNet18 (tests that build one take the ``fast_resnet_init`` fixture)."""
    return BatchedResNet18(seeds, num_classes=10)


NETS = {
    "mlp": lambda: BatchedMLP(MLPSpec((30, 16, 100, 4)), SEEDS),
    "convnet": lambda: BatchedConvNet(SEEDS),
    "resnet18": lambda: fast_resnet18(SEEDS),
}
# The regularised weights: every conv and linear weight but the output layer's.
REGULARISED = {
    "mlp": ["layers.0.weight", "layers.1.weight"],
    "convnet": ["conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "fc2.weight"],
    "resnet18": None,  # all 20 convs (downsample ones included), not fc
}


def _method(net, **overrides):
    cls = METHODS.get("parseval")
    method = cls(cls.hparams_for("scr", overrides), RunContext(seeds=SEEDS, task="scr", protocol=None))
    method.run.net = method.configure_network(net)
    return method


@pytest.mark.parametrize("kind", list(NETS))
def test_term_equals_a_direct_per_seed_computation(kind, fast_resnet_init):
    net = NETS[kind]()
    lam, s = 3e-3, 1.7
    method = _method(net, lam=lam, target="fixed", s=s)
    names = [name for name, _ in method.weights]
    if REGULARISED[kind] is None:
        assert names == [n for n, p in net.named_parameters() if n.endswith("weight") and p.dim() == 5]
        assert len(names) == 20
    else:
        assert names == REGULARISED[kind]
    term = method.loss_term(None, [])
    unscaled = _method(net, lam=lam, target="fixed", s=s, width_scale=False).loss_term(None, [])
    params = dict(net.named_parameters())
    for seed in range(len(SEEDS)):
        expected = expected_unscaled = 0.0
        for name in names:
            w = params[name][seed].detach().double()
            w = w.reshape(w.shape[0], -1)  # conv [out, in, k, k] -> [out, in*k*k]
            gram = w @ w.T
            penalty = torch.linalg.matrix_norm(gram - s * torch.eye(len(gram), dtype=gram.dtype)).item() ** 2
            expected += (64 / w.shape[0]) ** 2 * penalty  # the official (64/width)² factor, per layer
            expected_unscaled += penalty
        assert term[seed].item() == pytest.approx(lam * expected, rel=1e-4)
        assert unscaled[seed].item() == pytest.approx(lam * expected_unscaled, rel=1e-4)


def test_gradient_is_four_times_the_gram_defect_times_w_and_excludes_the_head(fast_resnet_init):
    net = NETS["mlp"]()
    method = _method(net, lam=1.0, target="fixed", width_scale=False)
    method.loss_term(None, []).sum().backward()
    for layer in net.layers[:-1]:
        w = layer.weight.detach()
        defect = torch.bmm(w, w.transpose(1, 2)) - 2.0 * torch.eye(w.shape[1])
        torch.testing.assert_close(layer.weight.grad, 4 * torch.bmm(defect, w), rtol=1e-4, atol=1e-5)
        assert layer.bias.grad is None
    assert net.layers[-1].weight.grad is None


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_gradient_steps_move_w_wt_toward_s_identity_for_every_seed_and_layer(kind, fast_resnet_init):
    net = NETS[kind]()
    method = _method(net, lam=1.0, width_scale=False, target="fixed", s=2.0)
    before = [(w.detach().flatten(2), name) for name, w in method.weights]

    def defect(w):
        return (torch.bmm(w, w.transpose(1, 2)) - 2.0 * torch.eye(w.shape[1])).square().sum((1, 2))

    start = [defect(w) for w, _ in before]
    opt = torch.optim.SGD([w for _, w in method.weights], lr=1e-4)
    for _ in range(20):
        opt.zero_grad()
        method.loss_term(None, []).sum().backward()
        opt.step()
    for (name, w), d0 in zip(method.weights, start):
        d1 = defect(w.detach().flatten(2))
        assert (d1 < d0).all(), (name, d0, d1)


def test_seed_alone_equals_seed_among_others():
    together = _method(BatchedConvNet(SEEDS)).loss_term(None, [])
    cls = METHODS.get("parseval")
    alone_net = BatchedConvNet(SEEDS[1:])
    alone = cls(cls.hparams_for("scr"), RunContext(seeds=SEEDS[1:], task="scr", protocol=None))
    alone.configure_network(alone_net)
    torch.testing.assert_close(alone.loss_term(None, []), together[1:], rtol=1e-5, atol=0)


def mean_row_norm2(w):
    """Mean squared row norm per seed, ``[S]`` (rows = output units or filters)."""
    w = w.detach().flatten(2)
    return w.square().sum(2).mean(1)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_default_target_is_each_layers_initial_mean_squared_row_norm(kind):
    """Issue 11 item 12: s_l = ‖W_l⁰‖²_F / n_l per seed (the official s = gain² is its orthogonal
    init's squared row norm), restated directly."""
    net = NETS[kind]()
    params = dict(net.named_parameters())
    s0 = {name: mean_row_norm2(p).double() for name, p in params.items() if p.dim() > 2}
    method = _method(net, lam=1.0, width_scale=False)
    term = method.loss_term(None, [])
    for seed in range(len(SEEDS)):
        expected = 0.0
        for name, _ in method.weights:
            w = params[name][seed].detach().double().flatten(1)
            gram = w @ w.T
            expected += torch.linalg.matrix_norm(gram - s0[name][seed] * torch.eye(len(gram), dtype=gram.dtype)
                                                 ).item() ** 2
        assert term[seed].item() == pytest.approx(expected, rel=1e-4)


def test_default_keeps_the_convnets_row_norms_where_a_fixed_s_inflates_them():
    """The ConvNet's rows start at ‖w‖² ≈ 1/3: descent on the default term never raises a hidden
    layer's mean squared row norm; a fixed s = 2 pulls it up (toward 6× the start)."""
    def descend(**hp):
        net = BatchedConvNet(SEEDS)
        method = _method(net, lam=1.0, width_scale=False, **hp)
        start = [mean_row_norm2(w) for _, w in method.weights]
        opt = torch.optim.SGD([w for _, w in method.weights], lr=2e-3)
        for _ in range(30):
            opt.zero_grad()
            method.loss_term(None, []).sum().backward()
            opt.step()
        return [mean_row_norm2(w) / s0 for (_, w), s0 in zip(method.weights, start)]

    for ratio in descend():  # orthogonalising the random rows shrinks them a little (fc2: about 12 %)
        assert ((ratio > 0.85) & (ratio < 1.0)).all(), ratio
    for ratio in descend(target="fixed", s=2.0):
        assert (ratio > 1.5).all(), ratio


def test_targets_are_checkpointed():
    method = _method(BatchedConvNet(SEEDS))
    state = method.state_dict()
    saved = [t.clone() for t in method.targets]
    for t in method.targets:
        t.mul_(3.0)
    method.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(method.targets, saved))
