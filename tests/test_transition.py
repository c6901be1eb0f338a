"""``task.transition=linear:N`` on scr, cimagenet and icifar100 (issue 13): in-task step t < N of
task k ≥ 1 shows each sample from task k with probability t/N, else from task k − 1; exactly the
old task at step 0 and exactly the new one from step N on. On the tiny official-format fixtures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from plastibench import rng
from plastibench.checks import check_step
from plastibench.clock import StepClock
from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS

CPU = torch.device("cpu")
N = 20


def make(name, seeds, data_dir=None, transition=f"linear:{N}", steps=None, **settings):
    """Task ``name``'s smoke stream under ``transition``, with the clock the engine sets."""
    cls = TASKS.get(name)
    proto = cls.with_options(cls.protocol("smoke"), {"transition": transition})
    proto = dataclasses.replace(proto, steps_per_task=steps or proto.steps_per_task,
                                settings={**proto.settings, **settings})
    task = cls(proto, torch.arange(seeds), data_dir=data_dir, verify=False)
    task.clock = StepClock(CPU)
    return task


def task_steps(task, t: int, n: int):
    """Yields (in-task step, its from_new mask, its batch) for the first ``n`` steps of task ``t``,
    each segment set up on the host and each step read as a device tensor, as the engine does."""
    task.start_task(t)
    offset = task.task_offset(t)
    rng.prepare(task.seeds, offset, n)
    every = task.segment_every(t)
    for step in range(n):
        if every and step % every == 0:
            task.start_segment(t, step)
        task.clock.set(offset + step, step)
        new = task.from_new(torch.tensor(step)) if task.transition_steps else None
        yield step, new, task.batch(t, torch.tensor(step))


def check_share(step: int, new: torch.Tensor) -> None:
    """All old at step 0, all new from step N on, else a share within binomial bounds of t/N."""
    share = new.float().mean().item()
    if step == 0 or step >= N:
        assert share == (0.0 if step == 0 else 1.0), step
    else:
        p = step / N
        assert abs(share - p) <= 4.5 * math.sqrt(p * (1 - p) / new.numel()), (step, share)


def test_scr_mixes_the_slow_bits_of_the_two_periods():
    task = make("scr", 400)
    f = task.f
    list(task_steps(task, 0, 3))
    slow = {k: task._slow_bits(k).unsqueeze(1) for k in (1, 2)}
    assert (slow[1] != slow[2]).any(-1).float().mean() > 0.99  # the periods differ for (nearly) every seed
    for step, new, (x, y) in task_steps(task, 2, N + 5):
        rows = slice(step, step + 1)
        assert torch.equal(x[..., f:], task.x[:, rows, f:])  # the period's own fast bits
        assert torch.equal(x[..., :f], torch.where(new.unsqueeze(-1), slow[2], slow[1]))
        assert torch.equal(y, task.target(x))  # the fixed target of the input shown
        check_share(step, new)
    _, _, (x0, y0) = next(task_steps(make("scr", 400, transition="abrupt"), 2, 1))
    assert torch.equal(x0[..., :f], slow[2]) and torch.equal(x[..., :f], slow[2])


def test_cimagenet_shows_the_old_pair_with_its_old_labels(tiny_imagenet32):
    task = make("cimagenet", 200, tiny_imagenet32, epochs=10)
    per_class = task.protocol.settings["train_per_class"]
    images = task.images.float() * task.scale
    task.start_task(0)
    old_pair = task.pair
    for step, new, (x, label) in task_steps(task, 1, N + 5):
        k = step % task._steps_per_epoch()
        idx = task._epoch_order[:, k * task.protocol.batch_size:(k + 1) * task.protocol.batch_size]
        assert torch.equal(label, idx // per_class)  # labels as in an abrupt stream
        pair = torch.where(new.unsqueeze(-1), task.pair.unsqueeze(1), old_pair.unsqueeze(1))
        cls = pair.gather(2, label.unsqueeze(-1)).squeeze(-1)
        assert torch.equal(x, images[cls, idx % per_class])
        check_share(step, new)
    assert not torch.equal(task.pair, old_pair)


def test_icifar100_old_samples_come_from_the_old_classes(tiny_cifar100):
    """Increment 2 adds classes 4-5 (positions in the order) to 0-3: a sample not from the new task
    is one of the old classes' training images, each at most once per epoch of theirs."""
    task = make("icifar100", 150, tiny_cifar100, epochs=10)
    b, old_classes = task.protocol.batch_size, 4
    old_images = old_classes * task.protocol.settings["train_per_class"]
    for step, new, (_, label) in task_steps(task, 2, N + 6):
        k = step % task.steps_per_epoch(2)
        flat = task._epoch_order[:, k * b:(k + 1) * b]
        assert torch.equal(label[new], (flat // task.train_index.shape[1])[new])
        assert (label[~new] < old_classes).all()
        if step < N:
            old = task._old_order.index_select(1, (k * b + torch.arange(b)) % old_images)
            assert torch.equal(label[~new], (old // task.train_index.shape[1])[~new])
        check_share(step, new)
    assert sorted(task._old_order[0].tolist()) == list(range(old_images))


@pytest.mark.parametrize("name", ["scr", "cimagenet", "icifar100"])
def test_transition_step_is_capturable(name, request, tmp_path):
    data = {"cimagenet": "tiny_imagenet32", "icifar100": "tiny_cifar100"}.get(name)
    cls = TASKS.get(name)
    proto = cls.with_options(cls.protocol("smoke"), {"transition": "linear:4"})
    engine = Engine(METHODS.get("bp"), {}, cls, proto, [0, 1], device=CPU, directory=tmp_path, config={},
                    data_dir=request.getfixturevalue(data) if data else None, verify=False)
    # task 1: before, across and after step N of its transition from task 0
    assert check_step(engine, n_steps=8, task=1) == []


@pytest.mark.parametrize("name", ["scr", "cimagenet", "icifar100"])
def test_transition_is_hashed_only_when_chosen(name):
    cls = TASKS.get(name)
    paper = cls.protocol("paper")
    assert cls.with_options(paper, {"transition": "abrupt"}) is paper
    assert cls.with_options(paper, {"transition": "linear:100"}).hash != paper.hash
