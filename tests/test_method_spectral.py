"""``spectral``: the power-iteration σ̂ of every layer converges to σ_max (torch.linalg.matrix_norm, ord=2) per
seed; the term is λ·Σ_l[(σ̂^k − 1)² + ‖b‖^2k] (+ BN terms); its gradient moves σ_max toward 1; the iteration's
vectors are per-seed state that checkpoints carry."""


import pytest
import torch

from plastibench import rng
from plastibench.method import RunContext
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])


def fast_resnet18(seeds):
    """A BatchedResNet18 (tests that build one take the ``fast_resnet_init`` fixture)."""
    return BatchedResNet18(seeds, num_classes=10)


def _mlp(seeds=SEEDS):
    net = BatchedMLP(MLPSpec((12, 9, 7, 3)), seeds)
    with torch.no_grad():  # non-zero biases, so that the bias variants differ
        for i, layer in enumerate(net.layers):
            layer.bias.copy_(rng.uniform(seeds, 0, f"test/bias{i}", tuple(layer.bias.shape[1:]), -0.5, 0.5))
    return net


NETS = {"mlp": _mlp, "convnet": lambda: BatchedConvNet(SEEDS), "resnet18": lambda: fast_resnet18(SEEDS)}


def _method(net, seeds=SEEDS, **overrides):
    cls = METHODS.get("spectral")
    method = cls(cls.hparams_for("scr", overrides), RunContext(seeds=seeds, task="scr", protocol=None))
    method.run.net = method.configure_network(net)
    return method


def _true_sigma(layer, bias_column):
    w = layer.weight.detach().flatten(2).double()
    if bias_column:
        w = torch.cat([w, layer.bias.detach().double().unsqueeze(2)], dim=2)
    if w.shape[2] > 1000:  # the ResNet's wide [out, in·9] matrices: σ_max(W)² = σ_max(W Wᵀ), far faster
        return torch.linalg.matrix_norm(torch.bmm(w, w.transpose(1, 2)), ord=2).sqrt()
    return torch.linalg.matrix_norm(w, ord=2)  # per seed


@pytest.mark.parametrize("kind, bias, iterations", [("mlp", "separate", 40), ("mlp", "column", 40),
                                                    ("convnet", "separate", 100), ("convnet", "column", 100),
                                                    ("resnet18", "separate", 10)])
def test_power_iteration_sigma_matches_matrix_norm_per_seed(kind, bias, iterations, fast_resnet_init):
    net = NETS[kind]()
    if kind == "resnet18":  # Gaussian layers have σ1 ≈ σ2 (slow power iteration): lift one filter
        with torch.no_grad():
            for _, m in net.named_modules():
                if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 5:
                    m.weight[:, 0] *= 4
    method = _method(net, bias=bias, power_iterations=iterations)
    sigmas = method.sigmas()  # the 15 warm-up iterations, then `iterations` more
    assert len(sigmas) == len(method.layers)
    for (name, layer), sigma in zip(method.layers, sigmas):
        assert sigma.shape == (len(SEEDS),)
        torch.testing.assert_close(sigma.detach().double(), _true_sigma(layer, bias == "column"),
                                   rtol=5e-3, atol=0, msg=name)
    if kind == "mlp":  # one step at a time from the kept vectors converges as well
        method = _method(net, bias=bias)
        for _ in range(iterations):
            sigmas = method.sigmas()
        for (name, layer), sigma in zip(method.layers, sigmas):
            torch.testing.assert_close(sigma.detach().double(), _true_sigma(layer, bias == "column"),
                                       rtol=1e-3, atol=0, msg=name)


def test_term_and_its_gradient_match_the_formula():
    """λ·Σ_l[(σ^k − 1)² + ‖b‖^2k]; ∂/∂W = λ·2(σ^k − 1)·k·σ^(k−1)·u₁v₁ᵀ with the top singular pair."""
    net = _mlp()
    lam, k = 0.1, 3
    method = _method(net, lam=lam, k=k, power_iterations=200)
    term = method.loss_term(None, [])
    expected = sum((_true_sigma(layer, False) ** k - 1) ** 2 + layer.bias.detach().double().square().sum(1) ** k
                   for layer in net.layers)
    torch.testing.assert_close(term.detach().double(), lam * expected, rtol=1e-4, atol=0)
    term.sum().backward()
    for layer in net.layers:
        u, sv, vh = torch.linalg.svd(layer.weight.detach().double())
        sigma, u1, v1 = sv[:, 0], u[:, :, 0], vh[:, 0, :]
        sign = torch.sign((u1 * torch.bmm(layer.weight.detach().double(), v1.unsqueeze(2)).squeeze(2)).sum(1))
        grad = lam * 2 * (sigma**k - 1) * k * sigma ** (k - 1)
        expected_grad = grad.view(-1, 1, 1) * torch.einsum("si,sj->sij", u1 * sign.unsqueeze(1), v1)
        torch.testing.assert_close(layer.weight.grad.double(), expected_grad, rtol=2e-3, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad.double(),
                                   lam * k * 2 * layer.bias.detach().double().square().sum(1, keepdim=True) ** (k - 1)
                                   * layer.bias.detach().double(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("scale", [3.0, 0.2])
def test_gradient_steps_move_sigma_max_toward_one(scale):
    net = _mlp()
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(scale / torch.linalg.matrix_norm(layer.weight, ord=2).view(-1, 1, 1))
    method = _method(net, lam=1.0)
    params = [layer.weight for layer in net.layers]
    opt = torch.optim.SGD(params, lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        method.loss_term(None, []).sum().backward()
        opt.step()
    for layer in net.layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
        assert ((sigma - 1).abs() < abs(scale - 1) - 0.05).all(), sigma


def test_batchnorm_scales_are_pulled_toward_one_and_shifts_toward_zero(fast_resnet_init):
    net = fast_resnet18(SEEDS)
    with torch.no_grad():
        net.bn1.weight.fill_(2.0)
        net.bn1.bias.fill_(0.5)
    method = _method(net, lam=1.0, k=2)
    method.loss_term(None, []).sum().backward()
    # ∂/∂γ (γ² − 1)² = 4γ(γ² − 1) = 24 at γ = 2;  ∂/∂β β⁴ = 4β³ = 0.5
    torch.testing.assert_close(net.bn1.weight.grad, torch.full_like(net.bn1.weight, 24.0))
    torch.testing.assert_close(net.bn1.bias.grad, torch.full_like(net.bn1.bias, 0.5))


def test_power_iteration_vectors_are_per_seed_state_and_checkpointed():
    seeds = torch.tensor([0, 1, 2])
    together, alone = _method(BatchedConvNet(seeds), seeds), _method(BatchedConvNet(seeds[2:]), seeds[2:])
    for _ in range(3):
        s_together, s_alone = together.sigmas(), alone.sigmas()
    for a, b in zip(s_together, s_alone):
        torch.testing.assert_close(a[2:], b, rtol=1e-5, atol=0)
    for a, b in zip(together.state_dict()["u"], alone.state_dict()["u"]):
        torch.testing.assert_close(a[2:], b, rtol=1e-5, atol=1e-6)
    # a resumed method (fresh vectors, then the checkpoint) continues the same iteration exactly
    net = together.run.net
    resumed = _method(net, seeds)
    assert not all(torch.equal(a, b) for a, b in zip(resumed.u, together.u))
    resumed.load_state_dict(together.state_dict())
    for a, b in zip(resumed.sigmas(), together.sigmas()):
        assert torch.equal(a, b)


def _independent_term(net, lam, k, bias):
    """λ·Σ_l over every weight with a matrix shape (output layer included), σ_max from svdvals of W
    reshaped [out, in·kh·kw] (with b appended as a column for ``column``), all in float64."""
    params = dict(net.named_parameters())
    total = torch.zeros(len(SEEDS), dtype=torch.float64)
    n_layers = 0
    for name, w in params.items():
        if not name.endswith("weight") or w.dim() < 3:
            continue
        n_layers += 1
        w = w.detach().double().flatten(2)
        b = params[name[: -len("weight")] + "bias"].detach().double()
        if bias == "column":
            sigma = torch.linalg.svdvals(torch.cat([w, b.unsqueeze(2)], dim=2))[:, 0]
            total += (sigma**k - 1) ** 2
        else:
            sigma = torch.linalg.svdvals(w)[:, 0]
            total += (sigma**k - 1) ** 2 + torch.linalg.vector_norm(b, dim=1) ** (2 * k)
    return lam * total, n_layers


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("bias", ["separate", "column"])
@pytest.mark.parametrize("k", [None, 1, 3])  # None: the default (k = 2, λ = 1e-4)
def test_term_matches_an_independent_svd_computation(kind, bias, k):
    net = NETS[kind]()
    with torch.no_grad():  # biases large enough that their handling moves the term
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(4 * p + rng.uniform(SEEDS, 0, f"test/{name}", tuple(p.shape[1:]), -0.5, 0.5))
    overrides = {"bias": bias, "power_iterations": 300}
    if k is not None:
        overrides.update(k=k, lam=0.5)
    method = _method(net, **overrides)
    hp = method.hp
    if k is None:
        assert (hp["k"], hp["lam"]) == (2, 1e-4)
    term = method.loss_term(None, [])
    want, n_layers = _independent_term(net, hp["lam"], hp["k"], bias)
    assert len(method.layers) == n_layers  # every layer, the output layer included
    assert term.shape == (len(SEEDS),)
    torch.testing.assert_close(term.detach().double(), want, rtol=1e-5, atol=0)  # 300 iterations: ~1e-6
    # the test tells the rules apart: another exponent or the other bias handling gives another value
    other_k, _ = _independent_term(net, hp["lam"], hp["k"] + 1, bias)
    other_bias, _ = _independent_term(net, hp["lam"], hp["k"], "column" if bias == "separate" else "separate")
    for other in (other_k, other_bias):
        assert ((other - want).abs() > 1e-3 * want.abs()).all()  # 100x the tolerance above
