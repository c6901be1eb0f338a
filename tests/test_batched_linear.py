"""``BatchedLinear``: its custom backward gives baddbmm's values with ``∂W`` in W's own layout."""

import pytest
import torch

from plastibench.nn import BatchedLinear, BatchedMLP, MLPSpec, _BatchedLinearFunction

SHAPES = [(1, 1, 7, 5), (1, 6, 7, 5), (3, 1, 4, 9), (3, 5, 13, 2)]  # (S, B, in, out)


def reference(x, weight, bias):
    """The plain formulation the layer replaces; autograd transposes its weight gradient."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def inputs(s, b, n_in, n_out, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s, b, n_in, generator=g, dtype=dtype)
    w = torch.randn(s, n_out, n_in, generator=g, dtype=dtype)
    bias = torch.randn(s, n_out, generator=g, dtype=dtype)
    grad_out = torch.randn(s, b, n_out, generator=g, dtype=dtype)
    return x, w, bias, grad_out


def grads(fn, x, w, bias, grad_out, x_grad=True):
    x, w, bias = x.clone().requires_grad_(x_grad), w.clone().requires_grad_(), bias.clone().requires_grad_()
    y = fn(x, w, bias)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, bias.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_baddbmm(shape, dtype):
    args = inputs(*shape, dtype)
    y, gx, gw, gb = grads(_BatchedLinearFunction.apply, *args)
    y_ref, gx_ref, gw_ref, gb_ref = grads(reference, *args)
    assert torch.equal(y, y_ref)  # the same op
    for got, want in ((gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got, want)  # to float rounding: the sums over B may run in another order
    if shape[1] == 1:  # one example: every ∂W entry is a single product, so bit for bit
        assert torch.equal(gw, gw_ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_is_contiguous_in_the_weights_layout(shape):
    layer = BatchedLinear(shape[0], shape[2], shape[3])
    with torch.no_grad():
        layer.weight.normal_()
    layer(torch.randn(shape[0], shape[1], shape[2])).sum().backward()
    assert layer.weight.grad.is_contiguous() and layer.weight.grad.stride() == layer.weight.stride()
    assert layer.bias.grad.shape == layer.bias.shape


def test_input_needing_no_gradient_gets_none_and_weights_still_match():
    args = inputs(2, 3, 6, 4, torch.float64)
    _, gx, gw, gb = grads(_BatchedLinearFunction.apply, *args, x_grad=False)
    _, _, gw_ref, gb_ref = grads(reference, *args, x_grad=False)
    assert gx is None
    torch.testing.assert_close(gw, gw_ref)
    torch.testing.assert_close(gb, gb_ref)


def test_non_contiguous_input():
    x, w, bias, grad_out = inputs(2, 4, 5, 3, torch.float64)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, seed axis not outermost in memory
    assert not x.is_contiguous()
    for got, want in zip(grads(_BatchedLinearFunction.apply, x, w, bias, grad_out),
                         grads(reference, x, w, bias, grad_out)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_float64(shape, x_grad):
    x, w, bias, _ = inputs(*shape, torch.float64)
    args = (x.requires_grad_(x_grad), w.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(_BatchedLinearFunction.apply, args)


def test_double_backward_works_as_a_composite():
    x, w, bias, _ = inputs(2, 3, 4, 5, torch.float64)
    args = (x.requires_grad_(), w.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradgradcheck(_BatchedLinearFunction.apply, args)


def test_mlp_gradients_match_the_baddbmm_formulation():
    net = BatchedMLP(MLPSpec((12, 9, 8, 3), "relu"), torch.arange(3))
    x = torch.randn(3, 4, 12)
    out, _ = net(x)
    out.square().sum().backward()
    h = x
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    for i in range(0, len(params), 2):
        h = reference(h, params[i], params[i + 1])
        h = torch.relu(h) if i + 2 < len(params) else h
    h.square().sum().backward()
    for p, q in zip(net.parameters(), params):
        torch.testing.assert_close(p.grad, q.grad)


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    layer = BatchedLinear(2, 6, 4)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 3, 6, requires_grad=True)
    compiled = torch.compile(lambda t: torch.relu(layer(t)).sum(), backend="aot_eager", fullgraph=True)
    compiled(x).backward()
    got = (x.grad, layer.weight.grad, layer.bias.grad)
    x.grad = layer.weight.grad = layer.bias.grad = None
    torch.relu(reference(x, layer.weight, layer.bias)).sum().backward()
    for g, want in zip(got, (x.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(g, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_training_step_captures_in_a_cuda_graph():
    dev = torch.device("cuda")
    layer = BatchedLinear(2, 6, 4, device=dev)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(2, 3, 6, device=dev)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up on a side stream, as capture requires
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            layer(x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        layer(x).square().sum().backward()
    graph.replay()
    torch.cuda.synchronize()
    w = layer.weight.detach().clone().requires_grad_()
    reference(x, w, layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad)
