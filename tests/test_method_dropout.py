"""``dropout``: inverted dropout after every hidden nonlinearity in train mode, nothing in eval mode.

Masks are a pure function of (seed, step, site): the train-mode forward is recomputed here from
``rng.uniform`` by hand, seed by seed, on the MLP, the ConvNet and the ResNet-18. The step is the
run's device clock, ``run.clock.step``; outside the engine the tests set it and prepare the random
blocks for it, as the engine does before each segment.
"""

import tempfile

import pytest
import torch

from plastibench import rng
from plastibench.clock import StepClock
from plastibench.engine import Engine
from plastibench.method import RunContext, StepInfo
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.registry import METHODS, TASKS
from plastibench.vision import BatchedConvNet, BatchedResNet18

SEEDS = torch.tensor([0, 1, 2])


def dropout(seeds: torch.Tensor, net: torch.nn.Module, p: float = 0.1, step: int = 0):
    cls = METHODS.get("dropout")
    run = RunContext(seeds=seeds, task="pmnist", protocol=None, clock=StepClock(seeds.device))
    method = cls(cls.hparams_for("pmnist", {"p": p}), run)
    at_step(method, step)
    return method, method.configure_network(net)


def at_step(method, step: int) -> None:
    """What the engine does before a segment that starts at global step ``step``: set the device
    clock and prepare the random blocks of the run's seeds."""
    method.run.clock.set(step, step)
    rng.prepare(method.run.seeds, step, 1)


def by_hand(seeds: torch.Tensor, step: int, p: float):
    """The post-activation transform dropout must equal: mask from rng.uniform, scaled by 1/(1-p)."""
    def fn(site, h):
        keep = rng.uniform(seeds, step, f"dropout/site{site}", tuple(h.shape[1:])) >= p
        return h * (keep.float() * (1 / (1 - p)))
    return fn


def test_drops_fraction_p_scales_kept_by_inverse_keep_rate_and_nothing_in_eval():
    p = 0.3
    method, net = dropout(SEEDS, BatchedMLP(MLPSpec((4, 50_000, 1)), SEEDS), p)
    h = torch.ones(3, 2, 50_000)
    out = method._drop(0, h)
    dropped = out == 0
    # 300k Bernoulli(0.3) draws: std of the fraction ≈ 0.0008
    assert abs(dropped.float().mean().item() - p) < 0.005
    for s in range(3):  # every seed drops its own fraction
        assert abs(dropped[s].float().mean().item() - p) < 0.01
    torch.testing.assert_close(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)))
    assert not torch.equal(dropped[0], dropped[1]) and not torch.equal(dropped[:, 0], dropped[:, 1])
    net.eval()
    assert method._drop(0, h) is h


@pytest.mark.parametrize("kind", ["mlp", "convnet", "resnet"])
def test_train_forward_equals_hand_masks_and_eval_forward_equals_the_base_net(kind):
    p, step = 0.25, 7
    make = {"mlp": (lambda: BatchedMLP(MLPSpec((6, 16, 16, 3)), SEEDS), (6,)),
            "convnet": (lambda: BatchedConvNet(SEEDS), (3, 32, 32)),
            # the ResNet-18's structure at a fraction of its widths, to keep the test fast
            "resnet": (lambda: BatchedResNet18(SEEDS, num_classes=5, widths=(8, 16, 16, 16)), (3, 8, 8))}[kind]
    x = torch.randn(3, 2, *make[1], generator=torch.Generator().manual_seed(0))
    base = make[0]()
    method, net = dropout(SEEDS, make[0](), p, step=step)
    base.eval(), net.eval()  # first, while BN running statistics are still the same
    torch.testing.assert_close(net(x)[0], base(x)[0], rtol=0, atol=0)
    base.train(), net.train()
    out, features = net(x)
    assert not torch.allclose(out, base(x)[0])
    net.set_post_activation(by_hand(SEEDS, step, p))
    ref, ref_features = net(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for f, r in zip(features, ref_features):
        torch.testing.assert_close(f, r, rtol=0, atol=0)
    assert len(features) == len(net.unit_groups())


def test_seed_alone_draws_the_masks_it_draws_beside_others_and_steps_differ():
    _, together = dropout(SEEDS, BatchedMLP(MLPSpec((6, 64, 2)), SEEDS))
    alone_seeds = SEEDS[2:]
    method, alone = dropout(alone_seeds, BatchedMLP(MLPSpec((6, 64, 2)), alone_seeds))
    h = torch.ones(3, 5, 64)
    assert torch.equal(together.post_activation(0, h)[2:], alone.post_activation(0, h[2:]))
    first = alone.post_activation(0, h[2:])
    assert torch.equal(first, by_hand(alone_seeds, 0, 0.1)(0, h[2:]))
    method.after_step(StepInfo(step=method.run.clock.step, task_index=0))
    method.run.clock.tick()  # the engine's end of the step: the next forward is step 1's
    second = alone.post_activation(0, h[2:])
    assert torch.equal(second, by_hand(alone_seeds, 1, 0.1)(0, h[2:])) and not torch.equal(second, first)
    assert not torch.equal(alone.post_activation(1, h[2:]), alone.post_activation(0, h[2:]))  # sites differ


def record_masks(engine, seen: list) -> None:
    """Wrap the engine's dropout so that every train-mode call appends (global step, site, h, out)."""
    drop = engine.net.post_activation

    def recorder(site, h):
        out = drop(site, h)
        if engine.net.training:
            seen.append((int(engine.clock.step), site, h.clone(), out.clone()))
        return out

    engine.net.set_post_activation(recorder)


def scr_engine(directory):
    cls, task = METHODS.get("dropout"), TASKS.get("scr")
    return Engine(cls, cls.hparams_for("scr"), task, task.protocol("smoke"), [0, 1],
                  device=torch.device("cpu"), directory=directory, config={})


def assert_masks_of_their_global_steps(engine, seen, steps):
    p = engine.method.hp["p"]
    assert sorted({k for k, *_ in seen}) == list(steps)
    for k, site, h, out in seen:
        torch.testing.assert_close(out, by_hand(engine.ctx.seeds, k, p)(site, h), rtol=0, atol=0)


def test_engine_keys_masks_by_global_step_and_checkpoints_it():
    directory = tempfile.mkdtemp()
    engine = scr_engine(directory)
    seen = []
    record_masks(engine, seen)
    engine.task.start_task(0)
    for step in range(3):
        engine._step(0, step)
    assert_masks_of_their_global_steps(engine, seen, range(3))
    # a later task keys its masks by the global step, not the step within the task
    offset = engine.task.task_offset(1)
    seen.clear()
    engine.task.start_task(1)
    engine._step(1, 0)
    assert_masks_of_their_global_steps(engine, seen, [offset])

    # a run resumed from a checkpoint after step 2 of task 0 draws what the uninterrupted one draws
    directory = tempfile.mkdtemp()
    engine, seen = scr_engine(directory), []
    record_masks(engine, seen)
    engine.task.start_task(0)
    for step in range(3):
        engine._step(0, step)
    engine.checkpoint()
    resumed, resumed_seen = scr_engine(directory), []
    assert resumed.resume() and resumed.step_in_task == 3
    record_masks(resumed, resumed_seen)
    resumed.task.start_task(0)
    seen.clear()
    for step in range(3, 6):
        engine._step(0, step)
        resumed._step(0, step)
    assert_masks_of_their_global_steps(resumed, resumed_seen, range(3, 6))
    assert len(resumed_seen) == len(seen)
    for (k, site, h, out), (k2, site2, h2, out2) in zip(seen, resumed_seen):
        assert (k, site) == (k2, site2)
        assert torch.equal(h, h2) and torch.equal(out, out2)  # bit for bit, the same masks
    for a, b in zip(engine.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)


def test_p_outside_unit_interval_is_refused():
    with pytest.raises(ValueError):
        dropout(SEEDS, BatchedMLP(MLPSpec((2, 3, 1)), SEEDS), 1.0)
