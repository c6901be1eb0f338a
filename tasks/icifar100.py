"""Class-incremental CIFAR-100 (``icifar100``), the Nature paper's hardest experiment.

Restated from ``lop/incremental_cifar/incremental_cifar_experiment.py`` of
``shibhansh/loss-of-plasticity`` (Dohare et al., Nature 2024, Fig. 2). Data: the official
CIFAR-100 python files (``<data-dir>/cifar-100-python/``, downloaded from the official URL with
checksum checks when missing). Per class, the first 50 training images in file order are the
validation set and the other 450 the training set; the test set is the official one.

Stream, per seed: a counter-based permutation of the 100 classes; increment t (t = 0..19) trains on
the first 5(t+1) classes of it. Per increment: 200 epochs over its training images, reshuffled every
epoch, mini-batch 90; SGD momentum 0.9, coupled weight decay 5e-4, learning rate 0.1, 0.02, 0.004,
0.0008 from epochs 0, 60, 120, 160 of the increment (momentum buffers are never reset; a method
with its own optimizer and rate follows the same schedule from its rate). Images are
scaled to [0, 1] and normalised per channel, then flipped, reflect-pad cropped and rotated at random
(``plastibench.augment``); the reference augments the test loader too, so the ``paper`` protocol
does (``augment_test``). The logits are restricted to the classes seen so far, the label of a class
is its position in the seed's order, and the loss is the cross-entropy over those logits. Network:
the reference's ResNet-18 (``plastibench.vision.BatchedResNet18``, 100 outputs, BatchNorm).

Evaluation and early stopping, as the reference (``incremental_cifar_experiment.py``,
``_store_test_summaries``, ``extend_classes``): after every epoch the live network is evaluated
(eval mode) on the test images of the seen classes (augmented with a fresh draw each epoch, as the
reference's test loader) and on their validation images; each seed keeps a copy of its network
(parameters and BN statistics) from the epoch with the best validation accuracy so far in the
increment (strictly better replaces it); at the end of the increment each seed's network is
restored from that copy (the optimizer state is not). Per increment and seed we record

* ``max_test_accuracy``, the protocols' metric: the maximum over the increment's epochs of that
  per-epoch test accuracy of the live network, the paper's Fig. 2 number
  (``plots/plot_incremental_cifar_results.py``, ``get_max_over_bins`` over the 200 epochs of
  ``test_accuracy_per_epoch``). It selects on the test set, as the paper does;
* ``restored_test_accuracy``: one test pass of the restored network at the end of the increment,
  i.e. the network the next increment starts from, chosen without the test set (plastibench's
  metric before issue 11; in expectation no higher than the maximum).

The per-epoch test pass costs about 7% of an epoch's training (100 test against 450 training
images per class, a forward pass against a forward and a backward).

Diagnostics, as the "next task" analysis of ``lop/incremental_cifar/post_run_analysis.py``, the one
the paper's Fig. 2 plots. Before increment t trains, i.e. on the network the previous increment's
early stopping restored (the reference's saved ``epoch-200t`` model; the initial one for t = 0):
the probe is ``probe_size`` (1000) unaugmented training-file images of the classes that increment t
adds, drawn per seed without replacement (keyed by t; the reference takes the first batch of 1000
of a shuffled loader) from all their training-file images (the analysis does not split off the
validation images); the network runs with every BatchNorm on the probe's batch statistics (the
reference never calls ``net.eval()`` there), dropout off (the reference's net has none), and its
buffers restored afterwards, so the trained network and the training stream are untouched.
Recorded:

* ``dormant_fraction``: the fraction of the units of all 17 feature layers, pooled, that are
  non-zero on fewer than ``dormant_threshold`` (1%) of the probe's inputs (and positions, for a
  conv channel) (``compute_dormant_units_proportion``);
* ``effective_rank``, ``stable_rank`` (99% of Σσ) of the pooled 512-d representation ``[P, 512]``
  only (``compute_effective_rank``, ``compute_stable_rank``);
* ``weight_magnitude``: mean |θ| over every parameter, biases and BN included
  (``compute_average_weight_magnitude``);
* plastibench's extras: ``channel_effective_rank/layer<i>``, ``channel_stable_rank/layer<i>`` of
  each conv feature map's position-averaged channels ``[P, C]`` (layers 0-15).

The reference also analyses 1000 images of all earlier classes ("previous_tasks_*", none before
the first increment); the paper does not plot it and we do not record it. The end-of-run
diagnostics reuse the last increment's probe (its classes are then trained on; the reference has no
end-of-run analysis).

``task.transition=linear:N`` (issue 13). Task k − 1 is increment k − 1's distribution: the first
5k classes of the seed's order. In-task step t < N of increment k ≥ 1 takes each sample, with
probability t/N (``Task.from_new``), from the increment's epoch order (all 5(k+1) seen classes, the
new ones included), else from an epoch order of its own over the 5k old classes' training images
(keyed by the epoch, read cyclically at the same position). So the new classes' share of the
samples grows from 0 to 1/(k+1), the share they have from step N on. Labels stay the classes'
positions in the order and the logits those of all 5(k+1) seen classes; evaluation, early stopping
and the learning-rate schedule are unchanged. ``abrupt``, the default, is unchanged.

Protocols (version 2 since issue 11: metric, probe, dormant threshold): ``paper`` is the reference's
20 increments of 200 epochs (1 050 000 steps); ``short`` keeps every setting and stops after 10
increments (50 classes, 275 000 steps), the part of the paper's Fig. 2 where backprop's gap to a
freshly trained network opens; ``smoke`` is 3 increments of 2 classes, 2 epochs and 6 training
images per class on a ResNet-18 of stage widths 4/8/8/16, for tests.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from plastibench import rng
from plastibench.augment import augment_cifar, normalize_cifar100
from plastibench.data.cifar100 import load_cifar100
from plastibench.data.paths import DataUnavailable
from plastibench.diagnostics import (batch_statistics, dormant_fraction, effective_rank, parameter_magnitude,
                                     stable_rank)
from plastibench.evaluate import accuracy, chunks
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task
from plastibench.task import BOUNDARIES, TRANSITION, Task, into
from plastibench.vision import BatchedResNet18

_SGD = OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
N_CLASSES = 100
LR_MILESTONES = (60, 120, 160)
LR_FACTOR = 0.2


def _protocol(name: str, n_tasks: int, epochs: int, description: str, *, classes_per_task: int = 5,
              batch: int = 90, train_per_class: int = 450, val_per_class: int = 50, probe: int = 1000,
              seeds: int = 10, widths: tuple[int, ...] = BatchedResNet18.WIDTHS) -> Protocol:
    if classes_per_task * train_per_class % batch:
        raise ValueError("an increment's training images must fill whole mini-batches")
    steps_first = epochs * classes_per_task * train_per_class // batch
    return Protocol(task="icifar100", name=name, version=2, n_tasks=n_tasks, steps_per_task=steps_first,
                    batch_size=batch, optimizer=_SGD, metric="max_test_accuracy", higher_is_better=True,
                    probe_size=probe, default_seeds=seeds, description=description,
                    settings={"classes_per_task": classes_per_task, "epochs": epochs,
                              "train_per_class": train_per_class, "val_per_class": val_per_class,
                              "lr_milestones": list(LR_MILESTONES), "lr_factor": LR_FACTOR,
                              "early_stopping": True, "augment_test": True, "eval_batch": 100,
                              "dormant_threshold": 0.01, "widths": list(widths)})


@register_task("icifar100")
class IncrementalCIFAR100(Task):
    summary = "class-incremental CIFAR-100: 20 increments of 5 classes, ResNet-18, 200 epochs each"
    plot_bin_tasks = 1
    options = {**BOUNDARIES, **TRANSITION}  # task.boundaries=hidden: the task's own per-task set-up still runs
    protocols = {
        "paper": _protocol("paper", 20, 200, "the reference's 20 increments of 5 classes, 200 epochs each "
                                             "(increment k has k times the first's steps)"),
        "short": _protocol("short", 10, 200, "the first 10 increments (50 classes), as the paper "
                                             "(increment k has k times the first's steps)"),
        "smoke": _protocol("smoke", 3, 2, "seconds, for tests", classes_per_task=2, batch=6, train_per_class=6,
                           val_per_class=2, probe=8, seeds=2, widths=(4, 8, 8, 16)),
    }

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        cfg = protocol.settings
        if cfg["classes_per_task"] * protocol.n_tasks > N_CLASSES:
            raise ValueError(f"{protocol.n_tasks} increments of {cfg['classes_per_task']} exceed 100 classes")
        data = load_cifar100(self.data_dir, verify=self.verify)
        self.data = {"cifar100": {"sha256": data.sha256, "verified": data.verified}}
        val, train = self._split(data.train_labels, cfg["val_per_class"], cfg["train_per_class"])
        test = self._per_class(data.test_labels, np.bincount(data.test_labels, minlength=N_CLASSES).min())
        dev = self.device
        self.train_images = torch.from_numpy(data.train_images).to(dev)  # uint8 [50000, 3, 32, 32]
        self.test_images = torch.from_numpy(data.test_images).to(dev)
        self.val_index, self.train_index = torch.from_numpy(val).to(dev), torch.from_numpy(train).to(dev)
        self.test_index = torch.from_numpy(test).to(dev)  # [100, per class] image indexes
        self.order = rng.permutation(seeds, 0, "icifar100/class_order", N_CLASSES)
        self.seen = 0
        self._epoch_key, self._epoch_order, self._old_order = None, None, None
        self._rows = torch.arange(protocol.batch_size, device=self.device)
        self.best_accuracy, self.best_state, self.max_test = None, None, None

    @staticmethod
    def _per_class(labels: np.ndarray, count: int) -> np.ndarray:
        """``[100, count]``: the indexes of each class's first ``count`` images, in file order."""
        if count == 0 or np.bincount(labels, minlength=N_CLASSES).min() < count:
            raise DataUnavailable("CIFAR-100 files hold too few images per class for this protocol; "
                                  "delete <data-dir>/cifar-100-python so that they are fetched again.")
        return np.stack([np.flatnonzero(labels == c)[:count] for c in range(N_CLASSES)])

    def _split(self, labels, n_val: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._per_class(labels, n_val + n_train)
        return rows[:, :n_val], rows[:, n_val:]

    def network(self, seeds=None):
        return BatchedResNet18(self.seeds if seeds is None else seeds, num_classes=N_CLASSES,
                               widths=tuple(self.protocol.settings["widths"]))

    # ----- the stream -----
    def steps_per_epoch(self, task_index: int) -> int:
        cfg = self.protocol.settings
        return (task_index + 1) * cfg["classes_per_task"] * cfg["train_per_class"] // self.protocol.batch_size

    def steps_in_task(self, task_index):
        return self.protocol.settings["epochs"] * self.steps_per_epoch(task_index)

    def start_task(self, task_index):
        self.seen = (task_index + 1) * self.protocol.settings["classes_per_task"]

    def _lr(self, epoch: int, base: float | None = None) -> float:
        """The rate of ``epoch``: ``base`` (the protocol's 0.1) times 0.2 per milestone passed,
        cleaned to 10 significant digits (the reference rounds 0.1·0.2 to 0.02)."""
        cfg = self.protocol.settings
        drops = sum(epoch >= m for m in cfg["lr_milestones"])
        base = self.protocol.optimizer.lr if base is None else base
        return float(f"{base * cfg['lr_factor'] ** drops:.10g}")

    def _set_lr(self, optimizer, epoch: int) -> None:
        """Every parameter group follows the schedule from its own first rate (a method that sets
        its own rate, e.g. ``adam``, keeps it as the base), remembered in the group as ``base_lr``.
        A per-member rate (``plastibench.members``) follows it per member, written in place."""
        for group in optimizer.param_groups:
            lr = group["lr"]
            if not torch.is_tensor(lr):
                group["lr"] = self._lr(epoch, group.setdefault("base_lr", lr))
                continue
            if "base_lr" not in group:
                group["base_lr"] = tuple(lr.tolist())
            lr.copy_(torch.tensor([self._lr(epoch, base) for base in group["base_lr"]], dtype=lr.dtype))

    def begin_task(self, task_index, net, optimizer):
        self._set_lr(optimizer, 0)
        self.best_accuracy, self.best_state, self.max_test = None, None, None

    def _images(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return normalize_cifar100(images[index])

    def _labelled(self, table: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Example ``flat[S, B]`` of the seen classes' ``table[100, n]`` -> (image index, label)."""
        n = table.shape[1]
        label = flat // n
        cls = self.order.gather(1, label)
        return table[cls, flat % n], label

    def segment_every(self, task_index):
        return self.steps_per_epoch(task_index)

    def start_segment(self, task_index, step):
        """The epoch's order of the seen classes' training examples, in one persistent buffer per
        increment (the steps read it in place)."""
        epoch = step // self.steps_per_epoch(task_index)
        if self._epoch_key != (task_index, epoch):
            n = self.seen * self.protocol.settings["train_per_class"]
            key = task_index * (self.protocol.settings["epochs"] + 1) + epoch
            order = rng.permutation(self.seeds, key, "icifar100/epoch", n)
            self._epoch_order = into(self._epoch_order, order)
            self._epoch_key = (task_index, epoch)
            if self.transition_steps and task_index > 0:
                self._draw_old_order(task_index, step, key)

    def _draw_old_order(self, task_index: int, step: int, key: int) -> None:
        """The epoch's order of the old classes' training examples (``transition=linear:N``), drawn
        for the epochs that start before step N (and after a resume): later steps take nothing from it."""
        old = task_index * self.protocol.settings["classes_per_task"] * self.protocol.settings["train_per_class"]
        if step < self.transition_steps or self._old_order is None or self._old_order.shape[1] != old:
            self._old_order = into(self._old_order, rng.permutation(self.seeds, key, "icifar100/epoch/old", old))

    def batch(self, task_index, step):
        b = self.protocol.batch_size
        k = step % self.steps_per_epoch(task_index)
        flat = self._epoch_order.index_select(1, k * b + self._rows)
        if self.transition_steps and task_index > 0:
            old = self._old_order.index_select(1, (k * b + self._rows) % self._old_order.shape[1])
            flat = torch.where(self.from_new(step), flat, old)
        index, label = self._labelled(self.train_index, flat)
        x = self._images(self.train_images, index)
        global_step = self.task_offset(task_index) + step
        return augment_cifar(x, self.seeds, global_step, "icifar100/augment/train"), label

    def select(self, out: torch.Tensor) -> torch.Tensor:
        """Logits of the classes seen so far, in the seed's class order: ``[S, B, seen]``."""
        cols = self.order[:, :self.seen]
        return out.gather(2, cols.unsqueeze(1).expand(-1, out.shape[1], -1))

    def loss(self, out, y):
        logits = self.select(out)
        s, b, c = logits.shape
        return F.cross_entropy(logits.reshape(s * b, c), y.reshape(-1), reduction="none").view(s, b).mean(1)

    def _held_out(self, images, table, per_class: int, augment_key: int | None):
        """Batches of every seen class's ``per_class`` images of ``table``, optionally augmented."""
        s = self.seeds.numel()
        flat = torch.arange(self.seen * per_class, device=self.device).expand(s, -1)
        for i, part in enumerate(chunks(flat.shape[1], self.protocol.settings["eval_batch"])):
            index, label = self._labelled(table[:, :per_class], flat[:, part])
            x = self._images(images, index)
            if augment_key is not None:
                x = augment_cifar(x, self.seeds, augment_key * 10_000 + i, "icifar100/augment/test")
            yield x, label

    def _test(self, net: torch.nn.Module, task_index: int, epoch: int) -> torch.Tensor:
        """Per-seed accuracy on the seen classes' test images after ``epoch`` epochs of the increment
        (epoch 0: the restored network), augmented with that pass's own draw if the protocol says so."""
        cfg = self.protocol.settings
        key = task_index * (cfg["epochs"] + 1) + epoch if cfg["augment_test"] else None
        return accuracy(net, self._held_out(self.test_images, self.test_index, self.test_index.shape[1], key),
                        self.select)

    # ----- per-epoch test and validation, early stopping -----
    def end_segment(self, task_index, steps_done, net, optimizer):
        epoch = steps_done // self.steps_per_epoch(task_index)  # epochs done: the epoch about to start
        cfg = self.protocol.settings
        test = self._test(net, task_index, epoch)
        self.max_test = test if self.max_test is None else torch.maximum(self.max_test, test)
        if cfg["early_stopping"]:
            val = accuracy(net, self._held_out(self.train_images, self.val_index, cfg["val_per_class"], None),
                           self.select)
            self._keep_best(net, val)
        if epoch < cfg["epochs"]:
            self._set_lr(optimizer, epoch)

    @torch.no_grad()
    def _keep_best(self, net: torch.nn.Module, val: torch.Tensor) -> None:
        state = net.state_dict()
        if self.best_state is None:
            self.best_accuracy = val.clone()
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            return
        better = val > self.best_accuracy
        self.best_accuracy = torch.where(better, val, self.best_accuracy)
        for k, v in state.items():
            mask = better.view(-1, *[1] * (v.dim() - 1))
            self.best_state[k].copy_(torch.where(mask, v, self.best_state[k]))

    def end_task(self, task_index, net):
        super().end_task(task_index, net)
        cfg = self.protocol.settings
        if cfg["early_stopping"] and self.best_state is not None:
            with torch.no_grad():
                for k, v in net.state_dict().items():
                    v.copy_(self.best_state[k])
        return {"max_test_accuracy": self.max_test, "restored_test_accuracy": self._test(net, task_index, 0)}

    # ----- diagnostics -----
    def probe(self, task_index):
        """``probe_size`` unaugmented training-file images of the classes increment ``task_index``
        adds, drawn per seed without replacement from all of theirs (validation split included)."""
        k = self.protocol.settings["classes_per_task"]
        table = torch.cat([self.val_index, self.train_index], 1)  # a class's training-file images, in file order
        n = table.shape[1]
        flat = rng.permutation(self.seeds, task_index, "icifar100/probe", k * n)[:, :self.protocol.probe_size]
        cls = self.order.gather(1, k * task_index + flat // n)
        return self._images(self.train_images, table[cls, flat % n])

    @torch.no_grad()
    def diagnostics(self, task_index, net):
        """The reference's next-task analysis (module docstring), name -> ``[S]``."""
        with batch_statistics(net):
            _, features = net(self.probe(task_index))
        features = [torch.nan_to_num(h.float(), nan=0.0, posinf=0.0, neginf=0.0) for h in features]  # diverged
        sv = torch.linalg.svdvals(features[-1])
        out = {"dormant_fraction": dormant_fraction(features, self.protocol.settings["dormant_threshold"]),
               "effective_rank": effective_rank(sv), "stable_rank": stable_rank(sv),
               "weight_magnitude": parameter_magnitude(net)}
        for i, h in enumerate(features[:-1]):
            sv = torch.linalg.svdvals(h.mean((3, 4)))
            out[f"channel_effective_rank/layer{i}"] = effective_rank(sv)
            out[f"channel_stable_rank/layer{i}"] = stable_rank(sv)
        return out

    def data_record(self):
        return self.data

    def state_dict(self):
        return {**super().state_dict(), "best_accuracy": self.best_accuracy, "best_state": self.best_state,
                "max_test": self.max_test}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.best_accuracy, self.best_state = state["best_accuracy"], state["best_state"]
        self.max_test = state["max_test"]
