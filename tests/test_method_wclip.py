"""``wclip``: after every step each parameter lies in ±ζ/√fan_in (its layer's fan-in; a BatchNorm's that of
the conv before it), and a step is the plain step clamped to that box."""

import math
import tempfile

import pytest
import torch

from plastibench.engine import Engine
from plastibench.method import RunContext
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1])


def fast_resnet18(seeds):
    """A BatchedResNet18 (tests that build one take the ``fast_resnet_init`` fixture)."""
    return BatchedResNet18(seeds, num_classes=10)


def _method(net, **overrides):
    cls = METHODS.get("wclip")
    method = cls(cls.hparams_for("cimagenet", overrides), RunContext(seeds=SEEDS, task="cimagenet", protocol=None))
    method.run.net = method.configure_network(net)
    return method


def _bounds(method):
    return {name: bound for name, _, bound in method.clips}


def test_mlp_bounds_are_zeta_over_sqrt_fan_in_for_weights_and_biases():
    net = BatchedMLP(MLPSpec((20, 7, 5, 1)), SEEDS)
    bounds = _bounds(_method(net, zeta=2.5))
    fan_ins = {"layers.0": 20, "layers.1": 7, "layers.2": 5}
    assert bounds == pytest.approx({f"{layer}.{kind}": 2.5 / math.sqrt(n)
                                    for layer, n in fan_ins.items() for kind in ("weight", "bias")})
    without_head = _bounds(_method(net, zeta=2.5, clip_last_layer=False))
    assert set(without_head) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}


def test_conv_bounds_use_in_channels_times_kernel_area():
    bounds = _bounds(_method(BatchedConvNet(SEEDS)))
    expected = {"conv1": 3 * 25, "conv2": 32 * 9, "conv3": 64 * 9, "fc1": 512, "fc2": 128, "fc3": 128}
    assert bounds == pytest.approx({f"{layer}.{kind}": 1 / math.sqrt(n)
                                    for layer, n in expected.items() for kind in ("weight", "bias")})


def test_resnet_batchnorm_takes_the_fan_in_of_the_conv_before_it(fast_resnet_init):
    net = fast_resnet18(SEEDS)
    bounds = _bounds(_method(net))
    assert len(bounds) == len(list(net.parameters()))
    assert bounds["bn1.weight"] == bounds["bn1.bias"] == pytest.approx(1 / math.sqrt(27))
    assert bounds["layer2.0.bn2.weight"] == pytest.approx(1 / math.sqrt(128 * 9))
    assert bounds["layer2.0.downsample.1.weight"] == pytest.approx(1 / math.sqrt(64))  # the 1x1 downsample conv
    assert bounds["fc.bias"] == pytest.approx(1 / math.sqrt(512))
    no_norm = _bounds(_method(net, clip_norm=False))
    assert not any(".bn" in name or name.startswith("bn") or "downsample.1" in name for name in no_norm)
    assert "layer2.0.downsample.0.weight" in no_norm


def test_after_step_clamps_resnet_parameters_into_their_box(fast_resnet_init):
    net = fast_resnet18(SEEDS)
    method = _method(net, zeta=1.5)
    method.after_step(None)
    for name, p, bound in method.clips:
        assert p.abs().max() <= bound, name
    assert (net.bn1.weight == 1.5 / math.sqrt(27)).all()  # γ = 1 clipped to its bound


def _engine(method, overrides=None):
    cls, task = METHODS.get(method), TASKS.get("scr")
    engine = Engine(cls, cls.hparams_for("scr", overrides), task, task.protocol("smoke"), [0, 1],
                    device=torch.device("cpu"), directory=tempfile.mkdtemp(), config={})
    engine.task.start_task(0)
    return engine


def test_every_step_is_the_plain_step_clamped_and_stays_inside_the_bounds():
    zeta = 1.2  # below the Kaiming-uniform init's √6 and √3 bounds: clipping acts from the first step
    clipped, plain = _engine("wclip", {"zeta": zeta}), _engine("bp")
    names = [name for name, _ in clipped.net.named_parameters()]
    expected = {name: zeta / math.sqrt(p.shape[2] if name.endswith("weight") else
                                       dict(clipped.net.named_parameters())[name[:-4] + "weight"].shape[2])
                for name, p in clipped.net.named_parameters()}
    plain._step(0, 0)
    clipped._step(0, 0)
    for name, p, q in zip(names, clipped.net.parameters(), plain.net.parameters()):
        torch.testing.assert_close(p, q.clamp(-expected[name], expected[name]), rtol=0, atol=0, msg=name)
    at_bound = 0
    for step in range(1, 60):
        clipped._step(0, step)
        for name, p in clipped.net.named_parameters():
            assert p.abs().max() <= expected[name], (step, name)
            at_bound += int((p.abs() == expected[name]).sum())
    assert at_bound > 0


def test_output_layer_is_left_alone_without_clip_last_layer():
    engine = _engine("wclip", {"zeta": 0.1, "clip_last_layer": False})
    head = engine.net.layers[-1]
    with torch.no_grad():
        head.weight.fill_(3.0)
    engine._step(0, 0)
    assert head.weight.abs().max() > 1.0
    assert engine.net.layers[0].weight.abs().max() <= 0.1 / math.sqrt(20)


def test_mlp_tasks_default_bound_contains_their_kaiming_init():
    from plastibench.methods.wclip import clip_bounds

    for task_name in ("scr", "pmnist"):
        zeta = METHODS.get("wclip").hparams_for(task_name)["zeta"]
        assert zeta == 3.0
    net = TASKS.get("scr")(TASKS.get("scr").protocol("smoke"), SEEDS).network()
    for name, p, bound in clip_bounds(net, 3.0):
        assert p.abs().max() <= bound, name
    assert any(p.abs().max() > b for _, p, b in clip_bounds(net, 1.0))  # ζ = 1 would clip the init
