"""The post-paper image streams (ipmnist, lpmnist, rlmnist; lpemnist, lpcifar10) and the stream dials
(transition, boundaries), on the tiny official-format MNIST, EMNIST and CIFAR-10 of ``conftest.py``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import torch
from typer.testing import CliRunner

from plastibench import plot_by, plots, rng
from plastibench.checks import check_step
from plastibench.cli import app
from plastibench.clock import StepClock
from plastibench.data.cifar10 import load_cifar10
from plastibench.data.emnist import load_emnist
from plastibench.engine import Engine
from plastibench.errors import UsageError
from plastibench.registry import METHODS, TASKS
from plastibench.results import run_config, run_dir, write_metrics, write_yaml

CPU = torch.device("cpu")
# The label-permuted streams: their data fixture, class count, raw training images as the official
# loader reads them, and one input's shape.
LABEL_PERMUTED = {
    "lpmnist": ("tiny_mnist", 10, None, (784,)),
    "lpemnist": ("tiny_emnist", 47, lambda d: load_emnist(d, verify=False).train_images, (784,)),
    "lpcifar10": ("tiny_cifar10", 10, lambda d: load_cifar10(d, verify=False).train_images, (3, 32, 32)),
}


def stream(name: str, seeds, tiny_mnist, steps: int | None = None, **options):
    """Task ``name``'s smoke stream (with ``steps`` per task if given), a clock set as the engine's."""
    cls = TASKS.get(name)
    proto = cls.with_options(cls.protocol("smoke"), options)
    proto = dataclasses.replace(proto, steps_per_task=steps or proto.steps_per_task)
    task = cls(proto, torch.tensor(seeds), data_dir=tiny_mnist, verify=False)
    task.clock = StepClock(CPU)
    return task


def steps_of(task, t: int):
    """Every batch of task ``t`` as (x, y) pairs, the clock kept as the engine keeps it."""
    task.start_task(t)
    offset, n = task.task_offset(t), task.steps_in_task(t)
    rng.prepare(task.seeds, offset, n)
    out = []
    for step in range(n):
        if task.segment_every(t) and step % task.segment_every(t) == 0:
            task.start_segment(t, step)
        task.clock.set(offset + step, step)
        out.append(task.batch(t, torch.tensor(step)))
    return out


def scaled(images: torch.Tensor) -> torch.Tensor:
    """``ToTensor`` then ``Normalize((0.5,), (0.5,))``: [0, 255] -> [−1, 1]."""
    return (images.float() / 255.0 - 0.5) / 0.5


# ----- the streams' defining properties -----

def test_ipmnist_permutation_is_fresh_per_task_and_changes_exactly_at_the_boundaries(tiny_mnist):
    task = stream("ipmnist", [0, 5], tiny_mnist)
    perms = [rng.permutation(task.seeds, t, "pixels", 784) for t in range(3)]  # fresh, not composed
    for t in range(3):
        for step, (x, y) in enumerate(steps_of(task, t)):
            idx = task.order[:, step:step + 1]
            assert torch.equal(y, task.labels[idx])
            want = scaled(task.images[idx]).gather(2, perms[t].unsqueeze(1))
            assert torch.equal(x, want), (t, step)
            if t:  # the previous task's permutation shows a different image
                assert not torch.equal(x, scaled(task.images[idx]).gather(2, perms[t - 1].unsqueeze(1)))
        assert x.min() >= -1 and x.max() <= 1
    assert not torch.equal(perms[0], torch.arange(784).expand(2, -1))  # task 0 is permuted too


@pytest.mark.parametrize("name", LABEL_PERMUTED)
def test_labels_are_permuted_exactly_at_the_boundaries_and_images_are_not(name, request):
    fixture, classes, raw, shape = LABEL_PERMUTED[name]
    data = request.getfixturevalue(fixture)
    task = stream(name, [1, 2], data)
    assert task.protocol.settings["classes"] == classes
    if raw is not None:  # the images as stored in the official files (EMNIST's transposed), flattened or not
        images = torch.from_numpy(raw(data)).reshape(len(task.labels), *shape)
        assert torch.equal(task.images, images)
    maps = []
    for t in range(3):
        label_map = rng.permutation(task.seeds, t, "labels", classes)
        assert torch.equal(label_map.sort(1).values, torch.arange(classes).expand(2, -1))
        for step, (x, y) in enumerate(steps_of(task, t)):
            idx = task.order[:, step:step + 1]
            assert x.shape == (2, 1, *shape) and x.min() >= -1 and x.max() <= 1
            assert torch.equal(x, scaled(task.images[idx]))
            assert torch.equal(y, label_map.gather(1, task.labels[idx]))  # task t's map from its first step to its last
        maps.append(label_map)
    assert not torch.equal(maps[0], maps[1]) and not torch.equal(maps[1], maps[2])


def test_lpemnist_and_lpcifar10_networks_are_upgds(tiny_emnist, tiny_cifar10):
    """lpemnist: 784-300-150-47 (``FullyConnectedReLU``); lpcifar10: ``ConvolutionalNetworkReLU``, whose
    convs have no ReLU (conv, pool, conv, pool, then 400-120-84-10 with ReLUs), restated in torch.nn
    with seed 1's parameters."""
    mlp = TASKS.get("lpemnist")(TASKS.get("lpemnist").protocol("paper"), torch.tensor([0]), data_dir=tiny_emnist,
                                verify=False).network()
    assert mlp.spec.sizes == (784, 300, 150, 47)
    cls = TASKS.get("lpcifar10")
    net = cls(cls.protocol("paper"), torch.tensor([0, 1]), data_dir=tiny_cifar10, verify=False).network()
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 5), torch.nn.MaxPool2d(2, 2), torch.nn.Conv2d(6, 16, 5),
                              torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(),
                              torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10))
    mine = [p for p in net.parameters()]
    theirs = [p for p in ref.parameters()]
    assert [tuple(p.shape[1:]) for p in mine] == [tuple(p.shape) for p in theirs]  # 62 006 parameters
    with torch.no_grad():
        for a, b in zip(mine, theirs):
            b.copy_(a[1])
    x = torch.randn(2, 4, 3, 32, 32)
    out, features = net(x)
    torch.testing.assert_close(out[1], ref(x[1]), rtol=1e-5, atol=1e-5)
    assert [h.shape[-1] for h in features] == [g.n_units for g in net.unit_groups()] == [120, 84]


def image_ids(task, x: torch.Tensor) -> torch.Tensor:
    """Which training image each input ``x[S, B, 784]`` (in [−1, 1]) shows (the tiny images are distinct)."""
    index = {row.tobytes(): i for i, row in enumerate(task.images.numpy())}
    raw = ((x * 0.5 + 0.5) * 255).round().to(torch.uint8).numpy()
    return torch.tensor([[index[img.tobytes()] for img in seed] for seed in raw])


def test_rlmnist_labels_are_redrawn_per_task_on_a_fixed_subset(tiny_mnist):
    task = stream("rlmnist", [0, 3], tiny_mnist, steps=60)
    m, b = task.protocol.settings["subset"], task.protocol.batch_size
    epoch = m // b - 1  # the code's epochs leave out their last batch
    kept = [set(task.subset[s].tolist()) for s in range(2)]
    assert all(len(k) == m for k in kept) and kept[0] != kept[1]
    labellings = []
    for t in range(3):
        batches = steps_of(task, t)
        ids = torch.cat([image_ids(task, x) for x, _ in batches], 1)
        ys = torch.cat([y for _, y in batches], 1)
        labelling = [{}, {}]
        for s in range(2):
            for i, y in zip(ids[s].tolist(), ys[s].tolist()):
                assert i in kept[s]
                assert labelling[s].setdefault(i, y) == y  # one label per image within a task
            assert len(labelling[s]) == m  # every kept image was shown
            # the labels are a shuffle of the kept images' true labels
            assert sorted(labelling[s].values()) == sorted(task.labels[list(kept[s])].tolist())
            for k in range(len(batches) // epoch):  # an epoch shows distinct images
                assert len(set(ids[s, k * epoch * b:(k + 1) * epoch * b].tolist())) == epoch * b
        labellings.append(labelling)
    for s in range(2):
        assert labellings[0][s] != labellings[1][s] != labellings[2][s]
        truth = {i: int(task.labels[i]) for i in kept[s]}
        assert labellings[0][s] != truth


# ----- transition=linear:N -----

@pytest.mark.parametrize("name", LABEL_PERMUTED)
def test_linear_transition_mixes_with_probability_t_over_n(name, request):
    n, seeds = 20, list(range(400))
    task = stream(name, seeds, request.getfixturevalue(LABEL_PERMUTED[name][0]), steps=n + 5,
                  transition=f"linear:{n}")
    steps_of(task, 0)
    task.start_task(1)
    offset = task.task_offset(1)
    rng.prepare(task.seeds, offset, n + 5)
    for t in range(n + 5):
        task.clock.set(offset + t, t)
        new = task.from_new(torch.tensor(t))
        x, y = task.batch(1, torch.tensor(t))
        digits = task.labels[task.order[:, t:t + 1]]
        want = torch.where(new, task.label_map.gather(1, digits), task.previous.gather(1, digits))
        assert torch.equal(y, want)
        share = new.float().mean().item()
        if t == 0 or t >= n:
            assert share == (0.0 if t == 0 else 1.0), t
        else:
            p = t / n
            assert abs(share - p) <= 4.5 * math.sqrt(p * (1 - p) / len(seeds)), (t, share)


def test_linear_transition_mixes_pixel_permutations(tiny_mnist):
    task = stream("ipmnist", list(range(40)), tiny_mnist, transition="linear:8")
    steps_of(task, 0)
    task.start_task(1)
    offset = task.task_offset(1)
    rng.prepare(task.seeds, offset, 8)
    mixed = []
    for t in range(8):
        task.clock.set(offset + t, t)
        new = task.from_new(torch.tensor(t))
        x, _ = task.batch(1, torch.tensor(t))
        images = scaled(task.images[task.order[:, t:t + 1]])
        for s in range(40):
            perm = task.pixels[s] if new[s, 0] else task.previous[s]
            assert torch.equal(x[s, 0], images[s, 0][perm])
        mixed.append(new.float().mean().item())
    assert 0 == mixed[0] < max(mixed[1:]) and min(mixed[1:]) < 1


@pytest.mark.parametrize("name", ["pmnist", "ipmnist", "lpmnist", "rlmnist", "lpemnist", "lpcifar10"])
def test_transition_step_is_capturable(name, request, tmp_path):
    cls = TASKS.get(name)
    proto = cls.with_options(cls.protocol("smoke"), {"transition": "linear:4"})
    data = request.getfixturevalue(LABEL_PERMUTED.get(name, ("tiny_mnist",))[0])
    engine = Engine(METHODS.get("bp"), {}, cls, proto, [0, 1], device=CPU, directory=tmp_path, config={},
                    data_dir=data, verify=False)
    assert check_step(engine, n_steps=8) == []  # before, across and after step N of the transition


def test_transition_values_are_validated_and_hashed_only_when_chosen():
    cls = TASKS.get("ipmnist")
    paper = cls.protocol("paper")
    assert cls.with_options(paper, {"transition": "abrupt", "boundaries": "visible"}) is paper
    a, b = (cls.with_options(paper, {"transition": f"linear:{n}"}) for n in (10, 100))
    assert len({paper.hash, a.hash, b.hash}) == 3 and a.settings["transition"] == "linear:10"
    for bad in ("linear:0", "linear:010", "linear:-3", "linear:", "linear:1.5", "linear:\uff11", "linear10",
                "cubic:3", "Abrupt"):
        with pytest.raises(ValueError, match="abrupt, linear:N"):
            cls.with_options(paper, {"transition": bad})


# ----- boundaries=hidden -----

@pytest.mark.parametrize("boundaries, calls", [("visible", [0, 1, 2]), ("hidden", [0])])
def test_hidden_boundaries_suppress_on_task_start(boundaries, calls, tiny_mnist, tmp_path, spy_method):
    cls = TASKS.get("ipmnist")
    proto = cls.with_options(cls.protocol("smoke"), {"boundaries": boundaries})
    engine = Engine(spy_method, {}, cls, proto, [0], device=CPU, directory=tmp_path,
                    config=run_config("spy", {}, proto, [0]), data_dir=tiny_mnist, verify=False)
    engine.run()
    assert engine.method.calls == calls


def test_hidden_boundaries_refuse_a_method_that_needs_them(tiny_mnist, tmp_path):
    cls = TASKS.get("ipmnist")
    proto = cls.with_options(cls.protocol("smoke"), {"boundaries": "hidden"})
    for name in ("head-reset", "cbp+head-reset"):
        with pytest.raises(UsageError, match="task.boundaries=hidden"):
            Engine(METHODS.get(name), {}, cls, proto, [0], device=CPU, directory=tmp_path, config={},
                   data_dir=tiny_mnist, verify=False)


@pytest.mark.parametrize("name", METHODS.names())
def test_a_method_that_acts_at_a_boundary_declares_it(name, tmp_path):
    """on_task_start(1) after a few steps changes the net, optimizer or method state iff the method
    declares ``needs_boundaries`` (snr re-estimates at every boundary here: ``threshold_update_every=1``)."""
    cls, task = METHODS.get(name), TASKS.get("scr")
    hp = cls.hparams_for("scr", {"threshold_update_every": 1} if name == "snr" else None)
    engine = Engine(cls, hp, task, task.protocol("smoke"), [0, 1], device=CPU, directory=tmp_path, config={})
    engine.task.start_task(0)
    engine.method.on_task_start(0)
    for step in range(5):
        engine._step(0, step)

    def state():
        return [t.clone() for t in (*engine.net.state_dict().values(),
                                    *(v for s in engine.optimizer.state.values() for v in s.values()),
                                    *_tensors(engine.method.state_dict())) if torch.is_tensor(t)]

    before = state()
    engine.method.on_task_start(1)
    after = state()
    changed = len(before) != len(after) or any(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed == cls.needs_boundaries


def _tensors(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    else:
        yield value


def test_transition_draws_do_not_depend_on_other_seeds(tiny_mnist):
    """Seed 3's mixing is the same alone as beside others (draws keyed by seed and device step)."""
    together = stream("rlmnist", [0, 3, 7], tiny_mnist, transition="linear:30")
    alone = stream("rlmnist", [3], tiny_mnist, transition="linear:30")
    for task in (together, alone):
        steps_of(task, 0)
    a = [y[1] for y in (pair[1] for pair in steps_of(together, 1))]
    b = [y[0] for y in (pair[1] for pair in steps_of(alone, 1))]
    np.testing.assert_array_equal(torch.stack(a).numpy(), torch.stack(b).numpy())


def test_run_refuses_head_reset_on_hidden_boundaries_with_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", "-m", "head-reset", "-t", "scr", "-p", "smoke", "--device", "cpu",
                                      "--out", str(tmp_path / "runs"), "--set", "task.boundaries=hidden"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "head-reset" in lines[0] and "task.boundaries=hidden" in lines[0]
    assert not (tmp_path / "runs").exists()


# ----- plot --by transition -----

def transition_run(root, method: str, transition: str, scores: np.ndarray, hparams=None):
    """A finished run of ipmnist/smoke with ``task.transition=transition`` and per-task values
    ``scores[task, seed]`` of its metric."""
    cls = TASKS.get("ipmnist")
    proto = cls.with_options(cls.protocol("smoke"), {"transition": transition})
    config = run_config(method, hparams or {}, proto, list(range(scores.shape[1])))
    directory = run_dir(root, config)
    write_yaml(directory / "config.yaml", config)
    write_metrics(directory / "metrics.csv", config["seeds"], [{proto.metric: row} for row in scores])
    write_yaml(directory / "summary.yaml", {"method": method})
    return directory


def test_plot_by_transition_gives_each_method_its_score_against_n(tmp_path):
    g = np.random.default_rng(0)
    values = {(m, n): g.uniform(size=(3, 4)) for m in ("bp", "upgd") for n in (0, 5, 50)}
    dirs = [transition_run(tmp_path, m, "abrupt" if n == 0 else f"linear:{n}", v) for (m, n), v in values.items()]
    data = plot_by.lines([plots.load_run(d) for d in dirs], "transition")
    assert list(data) == ["bp", "upgd"]
    for method, points in data.items():
        assert [p[0] for p in points] == [0, 5, 50]
        for n, mean, low, high in points:
            per_seed = values[method, n].mean(0)  # summary_fraction 1: every task
            assert mean == pytest.approx(per_seed.mean())
            half = scipy.stats.t.ppf(0.975, 3) * per_seed.std(ddof=1) / 2
            assert (low, high) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    out = tmp_path / "by.png"
    result = CliRunner().invoke(app, ["plot", *map(str, dirs), "--by", "transition", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_by_transition_refuses_runs_that_differ_in_more(tmp_path):
    a = transition_run(tmp_path, "bp", "abrupt", np.ones((3, 2)))
    b = transition_run(tmp_path, "bp", "linear:5", np.ones((3, 2)))
    other = TASKS.get("lpmnist").protocol("smoke")
    config = run_config("bp", {}, other, [0, 1])
    c = run_dir(tmp_path, config)
    write_yaml(c / "config.yaml", config)
    write_metrics(c / "metrics.csv", [0, 1], [{other.metric: np.ones(2)}] * 3)
    twin = transition_run(tmp_path, "bp", "linear:5", np.ones((3, 3)))  # bp at N = 5 again (3 seeds)
    for dirs, message in (([a, c], "differ only in transition"), ([a, b, twin], "bp has two runs at transition 5")):
        result = CliRunner().invoke(app, ["plot", *map(str, dirs), "--by", "transition", "-o",
                                          str(tmp_path / "x.png")])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app, ["plot", str(a), "--by", "transition", "--metric", "dead_fraction", "-o",
                                      str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "leave out --metric" in result.output


def test_upgd_takes_upgds_own_final_settings_on_its_streams():
    """``upgd2_grid`` of mohmdelsayed/upgd ``experiments/statistics_input_permuted_mnist.py``,
    ``statistics_output_permuted_emnist.py`` (the EMNIST protocol that lpmnist runs on MNIST) and
    ``statistics_output_permuted_cifar10.py``."""
    upgd = METHODS.get("upgd")
    assert upgd.hparams_for("ipmnist") == {"lr": 0.01, "beta_utility": 0.9999, "sigma": 0.1, "weight_decay": 0.01}
    assert upgd.hparams_for("lpmnist") == {"lr": 0.01, "beta_utility": 0.9, "sigma": 0.001, "weight_decay": 0.0}
    assert upgd.hparams_for("lpemnist") == upgd.hparams_for("lpmnist")
    assert upgd.hparams_for("lpcifar10") == {"lr": 0.01, "beta_utility": 0.999, "sigma": 0.001, "weight_decay": 0.0}


def test_baselines_take_their_final_settings_on_lpemnist_and_lpcifar10():
    """Weight clipping's own label-permuted EMNIST run (ζ = 2 with SGD 0.01), and UPGD's S&P runs
    (η = 0.01, decay 1e-3, σ_U = 5e-3: per-step noise η·σ_U)."""
    assert METHODS.get("wclip").hparams_for("lpemnist")["zeta"] == 2.0
    for task in ("lpemnist", "lpcifar10"):
        assert TASKS.get(task).protocol("paper").optimizer.lr == 0.01
        assert METHODS.get("snp").hparams_for(task) == {"weight_decay": 1e-3, "perturb_scale": pytest.approx(0.01 * 5e-3)}
