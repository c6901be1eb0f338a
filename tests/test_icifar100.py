"""``icifar100``: increments of the seed's class order, growing epochs, LR drops, restricted logits,
per-seed early stopping on validation, held-out test accuracy, and the user path through the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from plastibench.augment import normalize_cifar100
from plastibench.cli import app
from plastibench.data import cifar100
from plastibench.data.cifar100 import load_cifar100
from plastibench.data.paths import DataUnavailable
from plastibench.engine import Engine
from plastibench.method import Method
from plastibench.registry import TASKS
from plastibench.results import run_config

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


def test_metric_is_the_test_accuracy_of_the_network(tiny_cifar100):
    unaugmented = dataclasses.replace(SMOKE, settings={**SMOKE.settings, "augment_test": False})
    task = make_task(tiny_cifar100, protocol=unaugmented)
    net = task.network()
    task.start_task(2)  # 6 classes, 2 test images each
    got = task.end_task(2, net)
    net.eval()
    for s in range(2):
        classes = task.order[s, :6]
        x = normalize_cifar100(task.test_images[task.test_index[classes].flatten()])
        with torch.no_grad():
            out, _ = net(x.unsqueeze(0).expand(2, -1, -1, -1, -1))
        pred = out[s][:, classes].argmax(-1)
        label = torch.arange(6).repeat_interleave(2)
        assert got[s].item() == pytest.approx((pred == label).double().mean().item())


def invoke(*args):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_run_bp_and_cbp_on_the_smoke_protocol(tiny_cifar100, tmp_path):
    result = invoke("run", "--method", "bp,cbp", "--task", "icifar100", "--protocol", "smoke", "--seeds", "0-1",
                    "--device", "cpu", "--data-dir", str(tiny_cifar100), "--no-verify", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("summary.yaml"))) == 2


def test_missing_cifar_offline_exits_1_with_the_source_and_the_command(tmp_path, monkeypatch):
    def fail(urls, dest, sha256, **kwargs):
        raise DataUnavailable("network disabled in tests")

    monkeypatch.setattr(cifar100, "download_verified", fail)
    result = invoke("run", "--method", "bp", "--task", "icifar100", "--protocol", "smoke", "--device", "cpu",
                    "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "Traceback" not in text and "cs.toronto.edu" in text and "plastibench data fetch cifar100" in text
