"""``icifar100``: increments of the seed's class order, growing epochs, LR drops, restricted logits,
per-seed early stopping on validation, held-out test accuracy, and the user path through the CLI."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from plastibench.augment import normalize_cifar100
from plastibench.cli import app
from plastibench.data import cifar
from plastibench.data.cifar100 import load_cifar100
from plastibench.data.paths import DataUnavailable
from plastibench.engine import Engine
from plastibench.method import Method
from plastibench.registry import TASKS
from plastibench.results import read_metrics, run_config
from plastibench.vision import BatchedBatchNorm2d

CPU = torch.device("cpu")
TASK = TASKS.get("icifar100")
SMOKE = TASK.protocol("smoke")


def make_task(root, seeds=(0, 1), protocol=SMOKE):
    return TASK(protocol, torch.tensor(seeds), data_dir=root, verify=False)


def test_paper_protocol_is_the_reference_schedule():
    paper = TASK.protocol("paper")
    cfg = paper.settings
    assert (paper.n_tasks, cfg["classes_per_task"], cfg["epochs"], paper.batch_size) == (20, 5, 200, 90)
    assert (cfg["train_per_class"], cfg["val_per_class"]) == (450, 50)
    assert (paper.optimizer.lr, paper.optimizer.momentum, paper.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    task = TASK.__new__(TASK)
    task.protocol = paper
    assert [task.steps_in_task(t) for t in (0, 1, 19)] == [200 * 25, 200 * 50, 200 * 500]
    assert task.total_steps() == 1_050_000
    assert [task._lr(e) for e in (0, 59, 60, 119, 120, 159, 160, 199)] == \
        [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]


def test_increment_t_trains_on_the_first_classes_of_the_seed_order(tiny_cifar100):
    task = make_task(tiny_cifar100)
    data = load_cifar100(tiny_cifar100, verify=False)
    assert not torch.equal(task.order[0], task.order[1])
    task.start_task(1)  # 4 classes seen, 6 training images each, batch 6: 4 steps an epoch
    assert task.steps_per_epoch(1) == 4 and task.steps_in_task(1) == 8
    labels, indexes = [], []
    for step in range(4):
        task.start_segment(1, step)
        flat = task._epoch_order[:, step * 6:(step + 1) * 6]
        index, label = task._labelled(task.train_index, flat)
        # the step reads the same examples, its in-task step a device tensor
        assert torch.equal(task.batch(1, torch.tensor(step))[1], label)
        labels.append(label)
        indexes.append(index)
    label, index = torch.cat(labels, 1), torch.cat(indexes, 1)
    for s in range(2):
        classes = task.order[s, :4]
        # every training image of the 4 classes once, none of their validation images
        want = torch.cat([task.train_index[c] for c in classes])
        assert sorted(index[s].tolist()) == sorted(want.tolist())
        assert torch.equal(torch.as_tensor(data.train_labels)[index[s]], classes[label[s]])
        assert not set(index[s].tolist()) & set(task.val_index[classes].flatten().tolist())
    # validation = the first 2 images of each class in file order, training = the next 6
    for c in (0, 57):
        rows = (torch.as_tensor(data.train_labels) == c).nonzero().flatten()
        assert task.val_index[c].tolist() == rows[:2].tolist() and task.train_index[c].tolist() == rows[2:8].tolist()


def test_logits_are_restricted_to_the_seen_classes(tiny_cifar100):
    task = make_task(tiny_cifar100)
    task.start_task(0)
    out = torch.randn(2, 5, 100)
    y = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]])
    for s in range(2):
        cols = task.order[s, :2]
        assert torch.equal(task.select(out)[s], out[s][:, cols])
        want = F.cross_entropy(out[s][:, cols], y[s])
        torch.testing.assert_close(task.loss(out, y)[s], want)


class RecordLR(Method):
    """Backprop that records the learning rate of every step."""

    lrs: list = []

    def after_step(self, info):
        RecordLR.lrs.append(self.run.optimizer.param_groups[0]["lr"])


def test_learning_rate_drops_at_the_milestones_and_restarts_each_increment(tiny_cifar100, tmp_path):
    RecordLR.lrs = []
    settings = {**SMOKE.settings, "epochs": 3, "lr_milestones": [1, 2]}
    proto = dataclasses.replace(SMOKE, n_tasks=2, steps_per_task=6, settings=settings)
    Engine(RecordLR, {}, TASK, proto, [0], device=CPU, directory=tmp_path,
           config=run_config("bp", {}, proto, [0]), data_dir=tiny_cifar100, verify=False).run()
    # increment 0: 3 epochs of 2 steps; increment 1: 3 epochs of 4 steps
    assert RecordLR.lrs == [0.1] * 2 + [0.02] * 2 + [0.004] * 2 + [0.1] * 4 + [0.02] * 4 + [0.004] * 4


def test_early_stopping_restores_each_seed_from_its_own_best_epoch(tiny_cifar100):
    task = make_task(tiny_cifar100)
    net = task.network()
    task.start_task(0)
    task.begin_task(0, net, torch.optim.SGD(net.parameters(), lr=0.1))
    w = net.fc.weight
    first = w.detach().clone()
    task._keep_best(net, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with torch.no_grad():
        w.add_(1.0)
    task._keep_best(net, torch.tensor([0.6, 0.4], dtype=torch.float64))  # seed 0 improves, seed 1 not
    with torch.no_grad():
        w.add_(1.0)
    task._keep_best(net, torch.tensor([0.6, 0.5], dtype=torch.float64))  # ties do not replace
    with torch.no_grad():
        w.add_(1.0)
    task.end_task(0, net)
    torch.testing.assert_close(w[0], first[0] + 1.0)
    torch.testing.assert_close(w[1], first[1])


def test_validation_is_plain_and_test_is_augmented_as_the_reference(tiny_cifar100):
    task = make_task(tiny_cifar100)
    task.start_task(0)
    (x, _), = task._held_out(task.train_images, task.val_index, 2, None)
    classes = task.order[:, :2]
    want = normalize_cifar100(task.train_images[task.val_index[classes].flatten(1)])
    assert torch.equal(x, want)
    (xt, _), = task._held_out(task.test_images, task.test_index, 2, 0)
    plain = normalize_cifar100(task.test_images[task.test_index[classes].flatten(1)])
    assert xt.shape == plain.shape and not torch.equal(xt, plain)


def restated_accuracy(task, net, images, table, per_class):
    """Per-seed accuracy of ``net`` in eval mode on the first ``per_class`` images of ``table`` of each
    seen class, one seed at a time."""
    net.eval()
    got = []
    for s in range(task.seeds.numel()):
        classes = task.order[s, :task.seen]
        x = normalize_cifar100(images[table[classes, :per_class].flatten()])
        with torch.no_grad():
            out, _ = net(x.unsqueeze(0).expand(task.seeds.numel(), -1, -1, -1, -1))
        label = torch.arange(task.seen).repeat_interleave(per_class)
        got.append((out[s][:, classes].argmax(-1) == label).double().mean())
    net.train()
    return torch.stack(got)


def fitted_head(task, net, images, table, per_class):
    """An fc weight ``[S, 100, d]`` that classifies the first ``per_class`` images of ``table`` of
    each seen class right (least squares on their pooled features, fc bias 0)."""
    net.eval()
    with torch.no_grad():
        _, features = net(torch.stack([normalize_cifar100(images[table[task.order[s, :task.seen], :per_class]
                                                                        .flatten()]) for s in range(2)]))
    net.train()
    target = torch.zeros(2, features[-1].shape[1], 100)
    label = torch.arange(task.seen).repeat_interleave(per_class)
    for s in range(2):
        target[s, torch.arange(len(label)), task.order[s, label]] = 1.0
    return torch.linalg.lstsq(features[-1], target).solution.transpose(1, 2)


def test_metric_is_the_max_over_epochs_of_the_live_network_and_the_restored_pass_is_recorded(tiny_cifar100):
    """``max_test_accuracy``: the maximum over the increment's epochs of the test accuracy of the
    network as it is after each epoch (``get_max_over_bins``); ``restored_test_accuracy``: the test
    pass of the network restored from the best-validation epoch."""
    settings = {**SMOKE.settings, "augment_test": False, "epochs": 4}
    task = make_task(tiny_cifar100, protocol=dataclasses.replace(SMOKE, settings=settings))
    net = task.network()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    task.start_task(2)  # 6 classes, 2 test and 2 validation images each
    task.begin_task(2, net, optimizer)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        net.fc.bias.zero_()
    shape = net.fc.weight.shape
    heads = [torch.randn(shape, generator=g), fitted_head(task, net, task.train_images, task.val_index, 2),
             fitted_head(task, net, task.test_images, task.test_index, 2), torch.randn(shape, generator=g)]
    live, val = [], []
    for epoch, head in enumerate(heads, start=1):  # the network each epoch leaves
        with torch.no_grad():
            net.fc.weight.copy_(head)
        live.append(restated_accuracy(task, net, task.test_images, task.test_index, 2))
        val.append(restated_accuracy(task, net, task.train_images, task.val_index, 2))
        task.end_segment(2, epoch * task.steps_per_epoch(2), net, optimizer)
    got = task.end_task(2, net)
    live, val = torch.stack(live), torch.stack(val)
    best = [max(range(4), key=lambda e: (val[e, s].item(), -e)) for s in range(2)]  # strictly better replaces
    restored = torch.stack([live[best[s], s] for s in range(2)])
    assert (live.max(0).values > restored).all() and (live.max(0).values > live[-1]).all()  # all three differ
    torch.testing.assert_close(got["max_test_accuracy"], live.max(0).values)
    torch.testing.assert_close(got["restored_test_accuracy"], restored)
    torch.testing.assert_close(restated_accuracy(task, net, task.test_images, task.test_index, 2), restored)


def test_probe_is_training_file_images_of_the_classes_the_increment_adds(tiny_cifar100):
    """All 8 training-file images (the 2 validation ones included) of each of the 2 classes that
    increment 1 adds, unaugmented, each once; a smaller probe draws distinct ones of them."""
    task = make_task(tiny_cifar100, protocol=dataclasses.replace(SMOKE, probe_size=16))
    data = load_cifar100(tiny_cifar100, verify=False)
    labels = torch.as_tensor(data.train_labels)
    x = task.probe(1)
    small = make_task(tiny_cifar100).probe(1)  # probe_size 8
    for s in range(2):
        new = task.order[s, 2:4]
        rows = torch.isin(labels, new).nonzero().flatten()
        want = normalize_cifar100(task.train_images[rows])
        match = (x[s][:, None] == want[None]).flatten(2).all(2)
        assert torch.equal(match.sum(0), torch.ones(16, dtype=torch.long))
        assert torch.equal(match.sum(1), torch.ones(16, dtype=torch.long))
        match = (small[s][:, None] == want[None]).flatten(2).all(2)
        assert small.shape[1] == 8 and torch.equal(match.sum(1), torch.ones(8, dtype=torch.long))
        assert match.sum(0).max() == 1


def test_diagnostics_run_on_batch_statistics_and_leave_the_network_and_rng_alone(tiny_cifar100):
    task = make_task(tiny_cifar100)
    net = task.network()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BatchedBatchNorm2d):
                m.running_mean.fill_(100.0)  # on running statistics every unit would be silent
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch_rng = torch.get_rng_state()
    got = task.diagnostics(1, net)
    assert net.training and torch.equal(torch.get_rng_state(), torch_rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    twin = copy.deepcopy(net).train()
    with torch.no_grad():
        _, features = twin(task.probe(1))
    pooled = features[-1].double().numpy()
    for s in range(2):
        sv = np.linalg.svd(pooled[s], compute_uv=False)
        assert got["effective_rank"][s].item() == pytest.approx(reference_effective_rank(sv), rel=1e-4)
        assert got["stable_rank"][s].item() == reference_stable_rank(sv)
        dormant = sum(int(((h[s] != 0).double().mean((0, 2, 3) if h.dim() == 5 else 0) < 0.01).sum())
                      for h in features)
        assert got["dormant_fraction"][s].item() == pytest.approx(dormant / sum(h.shape[2] for h in features))
    assert (got["dormant_fraction"] < 1).all()


def reference_effective_rank(sv):
    """``post_run_analysis.py::compute_effective_rank``."""
    p = sv / np.abs(sv).sum()
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def reference_stable_rank(sv):
    """``post_run_analysis.py::compute_stable_rank``."""
    return int((np.cumsum(np.sort(sv)[::-1]) / sv.sum() < 0.99).sum()) + 1


class Constructed(torch.nn.Module):
    """Two seeds; returns fixed features for any input: two conv maps ``[2, 20, C, 2, 5]`` (200
    activations per channel) and a pooled layer ``[2, 20, 4]``; parameters a weight, a bias and a
    BN scale."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -0.5]]))
        self.bias = torch.nn.Parameter(torch.tensor([[-4.0, 4.0], [2.0, 0.0]]))
        self.bn_weight = torch.nn.Parameter(torch.tensor([[6.0], [-1.0]]))
        g = torch.Generator().manual_seed(0)
        a = torch.zeros(2, 20, 3, 2, 5)
        a[:, 0, 0, 0, 0] = 1.0  # channel 0: active on 1 of 200 (0.5%): dormant, though not always zero
        a[:, 3, 1, 1, 4] = a[:, 7, 1, 0, 2] = 2.0  # channel 1: 2 of 200 (1%): not dormant; channel 2: zero
        b = torch.rand(2, 20, 2, 2, 5, generator=g) + 0.1
        b[1, :, 1] = 0.0  # seed 1: channel 1 silent
        pooled = torch.rand(2, 20, 4, generator=g)
        pooled[0, :, 3] = 0.0  # seed 0: unit 3 silent
        self.features = [a, b, pooled]

    def forward(self, x):
        return torch.zeros(2, x.shape[1], 100), [f.clone() for f in self.features]


def test_diagnostics_pool_the_one_percent_rule_rank_the_pooled_layer_and_average_all_parameters(tiny_cifar100):
    task = make_task(tiny_cifar100)
    net = Constructed()
    got = task.diagnostics(0, net)
    # dormant: seed 0: a 0 and 2, pooled 3; seed 1: a 0 and 2, b 1 -> 3 of 3 + 2 + 4 units, pooled
    torch.testing.assert_close(got["dormant_fraction"], torch.tensor([3 / 9, 3 / 9], dtype=torch.float64))
    pooled = net.features[-1].double().numpy()
    for s in range(2):
        sv = np.linalg.svd(pooled[s], compute_uv=False)
        assert got["effective_rank"][s].item() == pytest.approx(reference_effective_rank(sv), rel=1e-5)
        assert got["stable_rank"][s].item() == reference_stable_rank(sv)
        conv = net.features[0][s].mean((2, 3)).double().numpy()
        sv = np.linalg.svd(conv, compute_uv=False)
        assert got["channel_effective_rank/layer0"][s].item() == pytest.approx(reference_effective_rank(sv), rel=1e-5)
    assert not any(k.startswith(("effective_rank/", "stable_rank/", "dead_fraction")) for k in got)
    torch.testing.assert_close(got["weight_magnitude"], torch.tensor([(6 + 8 + 6) / 6, (1 + 2 + 1) / 6]))


def invoke(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_run_bp_and_cbp_on_the_smoke_protocol(tiny_cifar100, tmp_path):
    result = invoke("run", "--method", "bp,cbp", "--task", "icifar100", "--protocol", "smoke", "--seeds", "0-1",
                    "--device", "cpu", "--data-dir", str(tiny_cifar100), "--no-verify", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("summary.yaml"))) == 2
    for path in tmp_path.rglob("metrics.csv"):
        names = set(read_metrics(path))
        assert {"max_test_accuracy", "restored_test_accuracy", "dormant_fraction", "effective_rank"} <= names


def test_missing_cifar_offline_exits_1_with_the_source_and_the_command(tmp_path, monkeypatch):
    def fail(urls, dest, sha256, **kwargs):
        raise DataUnavailable("network disabled in tests")

    monkeypatch.setattr(cifar, "download_verified", fail)
    result = invoke("run", "--method", "bp", "--task", "icifar100", "--protocol", "smoke", "--device", "cpu",
                    "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "cs.toronto.edu" in text and "plastibench data fetch cifar100" in text
