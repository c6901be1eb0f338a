"""The streams ``cifar5p1`` (Kumar et al.'s 5+1 CIFAR) and ``warmstart`` (Ash & Adams' warm start), on
the tiny official-format CIFAR-100 and CIFAR-10 of ``conftest.py``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from plastibench import rng
from plastibench.checks import check_step
from plastibench.clock import StepClock
from plastibench.data.cifar10 import load_cifar10
from plastibench.data.cifar100 import load_cifar100
from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS
from plastibench.results import read_yaml, run_config, summarise

CPU = torch.device("cpu")


def stream(name, data_dir, seeds, **options):
    cls = TASKS.get(name)
    task = cls(cls.with_options(cls.protocol("smoke"), options), torch.tensor(seeds), data_dir=data_dir, verify=False)
    task.clock = StepClock(CPU)
    return task


def batches(task, t):
    """Every batch of task ``t``, set up between steps as the engine does."""
    task.start_task(t)
    offset, n = task.task_offset(t), task.steps_in_task(t)
    rng.prepare(task.seeds, offset, n)
    out = []
    for step in range(n):
        if step % task.segment_every(t) == 0:
            task.start_segment(t, step)
        task.clock.set(offset + step, step)
        out.append(task.batch(t, torch.tensor(step)))
    return out


def image_ids(images: np.ndarray) -> dict[bytes, int]:
    """Raw image bytes -> index (the fixtures' random images are distinct)."""
    ids = {img.tobytes(): i for i, img in enumerate(images)}
    assert len(ids) == len(images)
    return ids


def unnormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised ``[..., 3, 32, 32]`` back to the uint8 pixels."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return (x * s + m).mul(255).round().to(torch.uint8).numpy()


def engine(name, data_dir, tmp_path, method="bp", seeds=(0, 1), **replace):
    cls, mcls = TASKS.get(name), METHODS.get(method)
    proto = dataclasses.replace(cls.protocol("smoke"), **replace)
    hp = mcls.hparams_for(name)
    return Engine(mcls, hp, cls, proto, list(seeds), device=CPU, directory=tmp_path,
                  config=run_config(method, hp, proto, list(seeds)), data_dir=data_dir, verify=False)


# ----- cifar5p1 -----

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


def test_cifar5p1_paper_protocol_is_kumars_recipe():
    proto = TASKS.get("cifar5p1").protocol("paper")
    cfg = proto.settings
    assert (proto.n_tasks, proto.steps_per_task, proto.batch_size) == (30, 780, 32)
    assert (cfg["hard_classes"], cfg["easy_classes"], cfg["train_per_class"]) == (5, 1, 500)
    assert (proto.optimizer.name, proto.optimizer.lr, proto.summary_fraction) == ("adam", 1e-3, 1.0)
    # ⌈n/B⌉ − 1 steps an epoch: 10 epochs of 78 steps fill a hard task exactly, 52 of 15 an easy one
    assert math.ceil(2500 / 32) - 1 == 78 and 780 % 78 == 0 and math.ceil(500 / 32) - 1 == 15


def test_cifar5p1_tasks_alternate_5_and_1_new_classes_and_show_only_their_images(tiny_cifar100):
    seeds = [0, 3]
    task = stream("cifar5p1", tiny_cifar100, seeds)
    data = load_cifar100(tiny_cifar100, verify=False)
    ids, per_class = image_ids(data.train_images), task.protocol.settings["train_per_class"]
    order = rng.permutation(torch.tensor(seeds), 0, "cifar5p1/classes", 100)  # the seed's class order
    want = [order[:, 0:5], order[:, 5:6], order[:, 6:11]]  # hard, easy, hard: never a class twice
    for t, classes in enumerate(want):
        assert torch.equal(task.task_classes(t), classes)
        seen = [set() for _ in seeds]
        for step, (x, y) in enumerate(batches(task, t)):
            pixels = unnormalise(x, *CIFAR10_STATS)
            for s in range(len(seeds)):
                assert set(y[s].tolist()) <= set(classes[s].tolist()), (t, step)
                for img, label in zip(pixels[s], y[s].tolist()):
                    i = ids[img.tobytes()]
                    assert data.train_labels[i] == label  # the image's own fine label
                    assert i in np.flatnonzero(data.train_labels == label)[:per_class]
                    seen[s].add(i)
        n = len(classes[0]) * per_class
        epoch = math.ceil(n / 4) - 1
        assert task.epoch_steps(t) == epoch
        if epoch > 1:  # a 30-image hard task: its 6 steps, all in the first epoch, show 24 distinct images
            assert all(len(s) == 24 for s in seen)
    assert not torch.equal(want[0][0], want[0][1])  # seeds draw their own classes


def test_cifar5p1_epochs_restart_at_the_codes_rule(tiny_cifar100):
    """⌈n/B⌉ − 1 steps an epoch (the code restarts once ``index + B >= n``), each a fresh shuffle: a
    hard task of 40 images in batches of 4 shows 36 distinct images in steps 0-8, and step 9 starts
    a new shuffle instead of showing the 4 left."""
    cls = TASKS.get("cifar5p1")
    smoke = cls.protocol("smoke")
    proto = dataclasses.replace(smoke, steps_per_task=10, settings={**smoke.settings, "train_per_class": 8})
    task = cls(proto, torch.tensor([0]), data_dir=tiny_cifar100, verify=False)
    task.clock = StepClock(CPU)
    data = load_cifar100(tiny_cifar100, verify=False)
    ids = image_ids(data.train_images)
    shown = [{ids[img.tobytes()] for img in unnormalise(x, *CIFAR10_STATS)[0]} for x, _ in batches(task, 0)]
    first = set().union(*shown[:9])
    task_images = {i for c in task.task_classes(0)[0].tolist() for i in np.flatnonzero(data.train_labels == c)}
    assert len(first) == 36 and first < task_images and shown[9] != task_images - first


def test_cifar5p1_metric_of_an_easy_task_is_the_hard_task_before_it_and_the_score_their_mean(tiny_cifar100):
    """Online accuracies a_t (t = 0..3, set through ``observe``): ``hard_online_accuracy`` is a_0, a_0,
    a_2, a_2 and the per-seed score (mean over all tasks) is (a_0 + a_2) / 2, the hard tasks' mean."""
    task = stream("cifar5p1", tiny_cifar100, [0, 1])
    proto = dataclasses.replace(task.protocol, n_tasks=4)
    y = torch.zeros(2, 4, dtype=torch.long)
    records, online = [], []
    for t in range(4):
        hits = torch.tensor([[t + 1, 4 - t]]).T > torch.arange(4)  # seed 0: t + 1 of 4 right, seed 1: 4 − t
        out = torch.nn.functional.one_hot(torch.where(hits, 0, 1), 100).float()
        for _ in range(3):
            task.observe(out, y, torch.zeros(2))
        record = task.end_task(t, None)
        online.append(hits.double().mean(1).numpy())
        np.testing.assert_array_equal(record["online_accuracy"], online[t])
        records.append({k: v.numpy() for k, v in record.items()})
    for t, hard in enumerate([0, 0, 2, 2]):
        np.testing.assert_array_equal(records[t]["hard_online_accuracy"], online[hard])
    config = {"seeds": [0, 1], "method": "bp", "hparams": {}}
    summary = summarise(config, proto, [{**r, "diverged": np.zeros(2, bool)} for r in records], {}, 0.0)
    np.testing.assert_allclose(list(summary["per_seed"].values()), (online[0] + online[2]) / 2, rtol=1e-12)


def test_cifar5p1_linear_transition_draws_old_task_examples_with_probability_1_minus_t_over_n(tiny_cifar100):
    n, seeds = 4, list(range(300))
    task = stream("cifar5p1", tiny_cifar100, seeds, transition=f"linear:{n}")
    batches(task, 0)
    old, new_classes = task.task_classes(0), task.task_classes(1)
    task.start_task(1)
    offset = task.task_offset(1)
    rng.prepare(task.seeds, offset, 6)
    for t in range(6):
        task.start_segment(1, t)
        task.clock.set(offset + t, t)
        new = task.from_new(torch.tensor(t))
        _, y = task.batch(1, torch.tensor(t))
        in_new = y == new_classes  # task 1 is easy: one class
        in_old = (y.unsqueeze(-1) == old.unsqueeze(1)).any(-1)
        assert torch.equal(in_new, new) and torch.equal(in_old, ~new), t
        share = new.float().mean().item()
        if t == 0 or t >= n:
            assert share == (0.0 if t == 0 else 1.0)
        else:
            p = t / n
            assert abs(share - p) <= 4.5 * math.sqrt(p * (1 - p) / (len(seeds) * 4)), (t, share)


def test_cifar5p1_transition_step_is_capturable(tiny_cifar100, tmp_path):
    cls = TASKS.get("cifar5p1")
    proto = cls.with_options(cls.protocol("smoke"), {"transition": "linear:3"})
    run = Engine(METHODS.get("bp"), {}, cls, proto, [0, 1], device=CPU, directory=tmp_path, config={},
                 data_dir=tiny_cifar100, verify=False)
    assert check_step(run, n_steps=6) == []


# ----- warmstart -----

WARM_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def test_warmstart_paper_protocol_is_ash_and_adams():
    proto = TASKS.get("warmstart").protocol("paper")
    cfg = proto.settings
    assert (proto.n_tasks, proto.batch_size, cfg["subset"], cfg["epochs"]) == (2, 128, 0.5, 350)
    assert (proto.optimizer.name, proto.optimizer.lr, proto.metric) == ("adam", 1e-3, "test_accuracy")
    assert proto.steps_per_task == 350 * (25_000 // 128) and proto.summary_tasks == 1  # scored: task 1


def test_warmstart_first_task_sees_a_random_half_and_the_second_all_of_it(tiny_cifar10):
    seeds = [0, 1]
    task = stream("warmstart", tiny_cifar10, seeds)
    data = load_cifar10(tiny_cifar10, verify=False)
    n = task.protocol.settings["train_images"]
    ids = image_ids(data.train_images[:n])
    per_epoch = [n // 2 // 10, n // 10]  # steps of batch 10
    seen = []
    for t in range(2):
        shown = [[] for _ in seeds]
        for x, y in batches(task, t):
            for s, (imgs, labels) in enumerate(zip(unnormalise(x, *WARM_STATS), y.tolist())):
                for img, label in zip(imgs, labels):
                    i = ids[img.tobytes()]
                    assert data.train_labels[i] == label
                    shown[s].append(i)
        for s in range(len(seeds)):  # every epoch shows each of the task's images exactly once
            epochs = [shown[s][k:k + per_epoch[t] * 10] for k in range(0, len(shown[s]), per_epoch[t] * 10)]
            assert len(epochs) == 2 and all(sorted(e) == sorted(epochs[0]) for e in epochs)
            assert epochs[0] != epochs[1]  # reshuffled
        seen.append([set(s) for s in shown])
    assert all(len(s) == n // 2 for s in seen[0]) and seen[0][0] != seen[0][1]  # a per-seed half
    assert all(s == set(range(n)) for s in seen[1])  # then all of them, the half included


def test_warmstart_metric_is_the_test_accuracy_of_each_task_end(tiny_cifar10, tmp_path):
    run = engine("warmstart", tiny_cifar10, tmp_path)
    ends = []
    original = run._end_task

    def end(t):
        net = run.net
        net.eval()
        data = load_cifar10(tiny_cifar10, verify=False)
        m, s = (torch.tensor(v).view(3, 1, 1) for v in WARM_STATS)
        x = (torch.from_numpy(data.test_images).float() / 255 - m) / s
        with torch.no_grad():
            out, _ = net(x.expand(2, *x.shape))
        net.train()
        ends.append((out.argmax(-1) == torch.from_numpy(data.test_labels)).double().mean(1).numpy())
        return original(t)

    run._end_task = end
    run.run()
    for t in range(2):
        np.testing.assert_allclose(run.records[t]["test_accuracy"], ends[t], rtol=0, atol=1e-12)
    summary = read_yaml(tmp_path / "summary.yaml")
    np.testing.assert_allclose(list(summary["per_seed"].values()), ends[1])  # the score: after 100%


def test_warmstart_second_task_starts_with_a_fresh_optimizer(tiny_cifar10):
    task = stream("warmstart", tiny_cifar10, [0])
    net = task.network()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(1, 2, 3, 32, 32))[0].sum().backward()
    optimizer.step()
    task.begin_task(0, net, optimizer)
    assert all(v.abs().sum() > 0 for st in optimizer.state.values() for v in st.values())
    task.begin_task(1, net, optimizer)
    assert all(torch.count_nonzero(v) == 0 for st in optimizer.state.values() for v in st.values())


def test_warmstart_refuses_a_transition_and_hashes_hidden_boundaries():
    cls = TASKS.get("warmstart")
    paper = cls.protocol("paper")
    with pytest.raises(ValueError, match="second task's data contain the first's"):
        cls.with_options(paper, {"transition": "linear:10"})
    hidden = cls.with_options(paper, {"boundaries": "hidden"})
    assert hidden.hash != paper.hash and cls.with_options(paper, {"boundaries": "visible"}) is paper


# ----- both -----

@pytest.mark.parametrize("name, fixture", [("cifar5p1", "tiny_cifar100"), ("warmstart", "tiny_cifar10")])
def test_hidden_boundaries_reach_no_method(name, fixture, request, tmp_path, spy_method):
    cls = TASKS.get(name)
    for boundaries, calls in (("visible", [0, 1]), ("hidden", [0])):
        proto = dataclasses.replace(cls.with_options(cls.protocol("smoke"), {"boundaries": boundaries}), n_tasks=2)
        run = Engine(spy_method, {}, cls, proto, [0], device=CPU, directory=tmp_path / boundaries,
                     config=run_config("spy", {}, proto, [0]), data_dir=request.getfixturevalue(fixture),
                     verify=False)
        run.run()
        assert run.method.calls == calls


def test_l2init_takes_its_papers_settings_on_these_streams():
    l2init = METHODS.get("l2init")
    assert l2init.hparams_for("cifar5p1")["lam"] == 1e-2  # Kumar et al., 5+1 CIFAR with Adam
    assert l2init.hparams_for("warmstart")["lam"] == 1e-3  # FIRE's warm_start.sh, --regen-coef
