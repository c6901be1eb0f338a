"""Warm-start CIFAR-10 (``warmstart``): train on half the training set, then on all of it.

Ash & Adams, "On warm-starting neural network training", NeurIPS 2020, §3 "basic batch updating"
(Fig. 1, Table 1): a ResNet-18 trained on a random 50% of CIFAR-10's training set and then, warm
started, on 100% generalises worse than one trained on 100% from a fresh initialisation, although
both fit their training data. FIRE (Han et al., ICLR 2026; ``isaac7778/FIRE``
``vision/scripts/warm_start.sh``, ``vision/train.py``, ``vision/task.py``) benchmarks plasticity
methods on the same two-phase stream (with a 10% first phase, after Hare & Tortoise: ``subset``).
The values below are the paper's as restated by its ReScience reproduction (Kireev et al. 2021;
notebooks in ``teaching-on-testbeds/re_warm_start_nn``); the authors' code was not read.

Stream, per seed: task 0 trains on a random ``subset`` (0.5) of the training images (a per-seed
draw), task 1 on all of them, task 0's included. Each task is ``epochs`` epochs of batches of 128,
a fresh shuffle per epoch; an epoch is ⌊n/128⌋ steps (**deviation**: the last, partial batch of a
shuffle is dropped; the paper's loader keeps it), so task 1 is twice as long as task 0. The stream
reads the first ``train_images`` training and ``test_images`` test images in file order (all 50 000
and 10 000 but in ``smoke``). No augmentation (the paper's Table 1 setting); images scaled to
[0, 1] and normalised with mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010) (the
reproduction's). Network: a ResNet-18 with 10 outputs; the paper gives no further detail (the
reproduction uses torchvision's ImageNet one); we use plastibench's CIFAR ResNet-18
(``BatchedResNet18``, the Nature paper's variant, shared with ``icifar100``). Optimizer: Adam, step
size 1e-3, one of the paper's two (Table 1: ResNet-Adam, fresh 78.0% against warm-started 74.4%;
the other is SGD with step size 1e-3), and FIRE's default. Before task 1 the optimizer's state
(Adam's moments and step count, SGD's momentum, a method's own optimizer state) is zeroed
(``fresh_optimizer``): the paper trains the second phase with a new optimizer, as FIRE does
(``optimizer = get_optimizer(model, cfg)`` per chunk); the task does this whether boundaries are
visible or not.

Length: the paper trains each phase to convergence (99% training accuracy; Fig. 1: 350 epochs a
phase); a stopping rule cannot stop one seed of a batch, so each protocol fixes its epochs:
``paper`` 350 per phase (Fig. 1's length, past convergence), ``short`` 10 per phase (a GPU's
minutes), ``smoke`` 2 epochs of batch 10 on the first 40 training and 10 test images (tasks of 4
and 8 steps), for tests, with a tiny conv net (``network: convnet``: ``BatchedConvNet`` of kernels
5, 5 and widths 2, 2, 4, 4) in place of the ResNet-18, to keep the conformance suite (every method
on every stream) fast; ``icifar100``'s smoke runs every method on the ResNet-18.

Metric: ``test_accuracy``, the accuracy of the network (eval mode, BatchNorm running statistics) on
the test images at the end of each task; the score is task 1's (``summary_fraction`` 0.5 of 2
tasks). Also recorded: ``online_accuracy``, the task's mean over its batches of the accuracy before
each update. The warm-start gap is a method's score against the fresh network's: run
``--method full-reset`` (re-drawn before task 1, with the fresh optimizer: the paper's "random
init") and ``plastibench compare`` the two. 10 seeds (the paper's Table 1 averages 5; FIRE runs 3).

Dials: ``task.boundaries=hidden`` works (no method hears of the switch to the full set; the
optimizer is still renewed, as part of the protocol). ``task.transition`` is refused: task 1's data
contain task 0's, so the tasks differ in how much data there is, not in which; a sample "from task
0" is also one of task 1's, and the paper defines no mix. Diagnostics
(``plastibench.diagnostics.measure``) use ``probe_size`` (1000) images of the task's training data.
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.data.cifar10 import load_cifar10
from plastibench.evaluate import accuracy, chunks
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task
from plastibench.task import BOUNDARIES, Epochs, Task, cross_entropy
from plastibench.vision import BatchedConvNet, BatchedResNet18

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_ADAM = OptimizerSpec(name="adam", lr=1e-3)


def _protocol(name, epochs, description, *, batch=128, train=50_000, test=10_000, probe=1000, seeds=10,
              network="resnet18", widths=BatchedResNet18.WIDTHS) -> Protocol:
    subset = 0.5
    return Protocol(task="warmstart", name=name, version=1, n_tasks=2,
                    steps_per_task=epochs * (int(train * subset) // batch), batch_size=batch, optimizer=_ADAM,
                    metric="test_accuracy", higher_is_better=True, summary_fraction=0.5, probe_size=probe,
                    default_seeds=seeds, description=description,
                    settings={"subset": subset, "train_images": train, "test_images": test, "epochs": epochs,
                              "fresh_optimizer": True, "eval_batch": 500, "network": network,
                              "widths": list(widths)})


@register_task("warmstart")
class WarmStart(Epochs, Task):
    summary = "warm-start CIFAR-10 (Ash & Adams): ResNet-18 on half the training set, then on all of it"
    plot_bin_tasks = 1
    options = {**BOUNDARIES}
    protocols = {
        "paper": _protocol("paper", 350, "350 epochs on 50%, then 350 on 100% (the paper's Fig. 1 length)"),
        "short": _protocol("short", 10, "10 epochs per phase, every other setting as the paper"),
        "smoke": _protocol("smoke", 2, "seconds, for tests", batch=10, train=40, test=10, probe=8, seeds=2,
                           network="convnet", widths=(2, 2, 4, 4)),
    }

    @classmethod
    def with_options(cls, protocol, options):
        if "transition" in options:
            raise ValueError("task 'warmstart' has no task.transition: its second task's data contain the "
                             "first's (50% -> 100%), so there is no old task to mix out; only "
                             "task.boundaries=visible|hidden applies")
        return super().with_options(protocol, options)

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        cfg = protocol.settings
        data = load_cifar10(self.data_dir, verify=self.verify)
        self.data = {"cifar10": {"sha256": data.sha256, "verified": data.verified}}
        n, n_test = cfg["train_images"], cfg["test_images"]
        if len(data.train_labels) < n or len(data.test_labels) < n_test:
            raise ValueError(f"warmstart/{protocol.name} reads {n} training and {n_test} test images; the CIFAR-10 "
                             f"files hold {len(data.train_labels)} and {len(data.test_labels)}")
        dev = self.device
        self.train_images = torch.from_numpy(data.train_images[:n]).to(dev)  # uint8 [n, 3, 32, 32]
        self.train_labels = torch.from_numpy(data.train_labels[:n].astype("int64")).to(dev)
        self.test_images = torch.from_numpy(data.test_images[:n_test]).to(dev)
        self.test_labels = torch.from_numpy(data.test_labels[:n_test].astype("int64")).to(dev)
        first = int(n * cfg["subset"])
        if first < protocol.batch_size:
            raise ValueError(f"a subset of {first} images does not fill a batch of {protocol.batch_size}")
        # task 0's images, per seed; task 1's are all of them
        self.pools = [rng.permutation(seeds, 0, "warmstart/subset", n)[:, :first].contiguous(),
                      torch.arange(n, device=dev).expand(seeds.numel(), n)]
        self._mean = torch.tensor(MEAN, device=dev).view(3, 1, 1)
        self._std = torch.tensor(STD, device=dev).view(3, 1, 1)

    def network(self, seeds=None):
        cfg, seeds = self.protocol.settings, self.seeds if seeds is None else seeds
        if cfg["network"] == "convnet":
            return BatchedConvNet(seeds, num_classes=10, widths=tuple(cfg["widths"]), kernels=(5, 5))
        return BatchedResNet18(seeds, num_classes=10, widths=tuple(cfg["widths"]))

    def inputs(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (images[index].float().div_(255.0) - self._mean) / self._std

    # ----- the stream -----
    def n_examples(self, task_index: int) -> int:
        return self.pools[task_index].shape[1]

    def epoch_steps(self, task_index: int) -> int:
        return self.pools[task_index].shape[1] // self.protocol.batch_size

    def steps_in_task(self, task_index):
        return self.protocol.settings["epochs"] * self.epoch_steps(task_index)

    def begin_task(self, task_index, net, optimizer):
        """Before task 1: the optimizer's per-parameter state zeroed, as a new optimizer's."""
        if task_index and self.protocol.settings["fresh_optimizer"]:
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    def batch(self, task_index, step):
        slot = self.epoch_slots(task_index, step)
        index = self.pools[task_index].gather(1, slot)
        return self.inputs(self.train_images, index), self.train_labels[index]

    def loss(self, out, y):
        return cross_entropy(out, y)

    def step_metric(self, out, y, loss):
        return (out.argmax(-1) == y).float().mean(1)

    def test_batches(self):
        s, n = self.seeds.numel(), len(self.test_labels)
        for part in chunks(n, self.protocol.settings["eval_batch"]):
            index = torch.arange(part.start, part.stop, device=self.device).expand(s, -1)
            yield self.inputs(self.test_images, index), self.test_labels[index]

    def end_task(self, task_index, net):
        online = super().end_task(task_index, net)
        return {"test_accuracy": accuracy(net, self.test_batches()), "online_accuracy": online}

    def probe(self, task_index):
        pool = self.pools[task_index]
        n = min(self.protocol.probe_size, pool.shape[1])
        slot = rng.permutation(self.seeds, task_index, "warmstart/probe", pool.shape[1])[:, :n]
        return self.inputs(self.train_images, pool.gather(1, slot))

    def data_record(self):
        return self.data
