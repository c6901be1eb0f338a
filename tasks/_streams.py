"""What the image streams share: the MNIST streams (``pmnist``, ``ipmnist``, ``lpmnist``,
``rlmnist``) and the label-permuted EMNIST and CIFAR-10 streams (``lpemnist``, ``lpcifar10``).

A stream's training images (``dataset``: MNIST, EMNIST balanced or CIFAR-10) live on the device as
uint8, ``[N, 784]`` for the 28x28 sets (as stored, flattened) and ``[N, 3, 32, 32]`` for CIFAR-10;
a stream picks images with per-seed index tensors ``[S, B]`` and turns them into inputs
(``inputs``: optionally pixel-permuted, scaled to [0, 1] or, with ``settings["inputs"] ==
"symmetric"``, to [−1, 1] as ``Normalize((0.5,), (0.5,))`` does, every channel alike). The network
is the seed-batched MLP of the protocol's ``hidden`` sizes (``BatchedMLP``) unless a stream builds
another, the loss the cross-entropy, the metric online accuracy: whether the prediction made
*before* the update is right, averaged over the task. Every stream here offers ``task.boundaries``
and ``task.transition`` (``plastibench.task``); ``mix`` applies the transition to whatever the two
tasks differ in (a pixel permutation, a label map).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from plastibench import rng
from plastibench.data.cifar10 import load_cifar10
from plastibench.data.emnist import load_emnist
from plastibench.data.mnist import load_mnist
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.task import BOUNDARIES, TRANSITION, Task, cross_entropy

PIXELS = 784


def _mnist(data_dir, verify) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    split = load_mnist(data_dir, "train", verify=verify)
    return split.images, split.labels, {"sha256": split.sha256, "verified": split.verified}


def _emnist(data_dir, verify):
    data = load_emnist(data_dir, verify=verify)
    return data.train_images, data.train_labels, {"sha256": data.sha256, "verified": data.verified}


def _cifar10(data_dir, verify):
    data = load_cifar10(data_dir, verify=verify)
    return data.train_images, data.train_labels, {"sha256": data.sha256, "verified": data.verified}


# dataset -> loader of its training set: (uint8 images [N, ...], labels [N], data record)
DATASETS = {"mnist": _mnist, "emnist": _emnist, "cifar10": _cifar10}


def upgd_protocols(task: str, n_tasks: int, steps: int, lr: float, short_tasks: int, paper: str,
                   classes: int = 10, net: dict | None = None, smoke_net: dict | None = None
                   ) -> dict[str, Protocol]:
    """The protocols of a UPGD stream: batch 1, plain SGD with step size ``lr``, ``torch.nn``'s
    default init, inputs in [−1, 1], online accuracy averaged over the whole stream
    (``summary_fraction`` 1), 20 seeds, ``classes`` outputs. The network's settings are ``net``
    (default: a 784-300-150-``classes`` ReLU MLP) and, for ``smoke``, ``smoke_net`` (default
    784-32-16). ``paper``: ``n_tasks`` tasks of ``steps``; ``short``: the first ``short_tasks``;
    ``smoke``: 3 tasks of 20 steps."""
    net = net or {"hidden": [300, 150], "activation": "relu"}
    smoke_net = smoke_net or {"hidden": [32, 16], "activation": "relu"}

    def protocol(name, n, length, arch, description, probe=1000, seeds=20):
        return Protocol(task=task, name=name, version=1, n_tasks=n, steps_per_task=length, batch_size=1,
                        optimizer=OptimizerSpec(name="sgd", lr=lr), metric="online_accuracy",
                        higher_is_better=True, summary_fraction=1.0, probe_size=probe, default_seeds=seeds,
                        description=description,
                        settings={**arch, "init": "default", "inputs": "symmetric", "classes": classes})

    return {"paper": protocol("paper", n_tasks, steps, net, paper),
            "short": protocol("short", short_tasks, steps, net,
                              f"the first {short_tasks} tasks, every other setting as the paper"),
            "smoke": protocol("smoke", 3, 20, smoke_net, "seconds, for tests", probe=64, seeds=2)}


class ImageStream(Task):
    """Base of the image streams: the training set of ``dataset`` on the device; ``state_names`` are
    the attributes a checkpoint keeps."""

    online = True
    options = {**BOUNDARIES, **TRANSITION}
    dataset: ClassVar[str] = "mnist"
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        images, labels, record = DATASETS[self.dataset](self.data_dir, self.verify)
        n = len(labels)
        self.data = {self.dataset: {**record, "images": n}}
        shape = images.shape[1:] if images.ndim == 4 else (images[0].size,)  # colour kept, 28x28 flattened
        self.images = torch.from_numpy(np.ascontiguousarray(images).reshape(n, *shape)).to(self.device)
        self.labels = torch.from_numpy(labels.astype("int64")).to(self.device)
        self._rows = torch.arange(protocol.batch_size, device=self.device)

    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(self.protocol.settings["hidden"])

    def network(self, seeds=None):
        cfg = self.protocol.settings
        spec = MLPSpec((PIXELS, *self.hidden_sizes(), cfg["classes"]), cfg["activation"], cfg.get("init", "kaiming"))
        return BatchedMLP(spec, self.seeds if seeds is None else seeds)

    def inputs(self, idx: torch.Tensor, permutation: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``idx[S, B]`` as ``[S, B, ...]`` floats, pixel ``j`` of a flattened image read from
        ``permutation[..., j]`` (``[S, 784]`` per seed or ``[S, B, 784]`` per sample) when given."""
        x = self.images[idx]
        if permutation is not None:
            per_sample = permutation if permutation.dim() == 3 else permutation.unsqueeze(1)
            x = x.gather(2, per_sample.expand(*idx.shape, PIXELS))
        x = x.float().div_(255.0)
        return x.sub_(0.5).div_(0.5) if self.protocol.settings.get("inputs") == "symmetric" else x

    def mix(self, step: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Per sample of in-task step ``step``: ``new`` where it comes from the new task (``from_new``),
        else ``old``; both lead with ``[S, B]`` or broadcast to it."""
        choose = self.from_new(step)
        return torch.where(choose.view(*choose.shape, *[1] * (max(new.dim(), old.dim()) - 2)), new, old)

    def loss(self, out, y):
        return cross_entropy(out, y)

    def step_metric(self, out, y, loss):
        return (out.argmax(-1) == y).float().mean(1)

    def data_record(self):
        return self.data

    def state_dict(self):
        state = super().state_dict()
        for name in self.state_names:
            value = getattr(self, name)
            state[name] = value.clone() if torch.is_tensor(value) else value
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for name in self.state_names:
            value = state[name]
            setattr(self, name, value.to(self.device) if torch.is_tensor(value) else value)


class LabelPermutedStream(ImageStream):
    """UPGD's label-permuted stream (``core/task/label_permuted_*.py``): task k relabels every image
    through a fresh per-seed permutation of the ``classes`` labels and shows the first
    ``steps_per_task`` images of a fresh shuffle of the training set (wrapping around it if longer)."""

    def _label_map(self, task_index: int):
        return rng.permutation(self.seeds, task_index, "labels", self.protocol.settings["classes"])

    def start_task(self, task_index):
        self.label_map = self._label_map(task_index)
        self.previous = self._label_map(max(task_index - 1, 0))
        self.order = rng.permutation(self.seeds, task_index, "order", len(self.labels))

    def batch(self, task_index, step):
        pos = (step * self.protocol.batch_size + self._rows) % len(self.labels)
        idx = self.order.index_select(1, pos)
        digits = self.labels[idx]
        y = self.label_map.gather(1, digits)
        if self.transition_steps:
            y = self.mix(step, y, self.previous.gather(1, digits))
        return self.inputs(idx), y

    def probe(self, task_index):
        return self.inputs(self.order[:, : self.protocol.probe_size])


class PixelPermutedStream(ImageStream):
    """A stream whose tasks differ in a per-seed pixel permutation: ``start_task`` sets ``pixels``
    (task k's), ``previous`` (task k − 1's; task 0's own at task 0) and ``order`` (the example order)."""

    def batch(self, task_index, step):
        pos = (step * self.protocol.batch_size + self._rows) % len(self.labels)
        idx = self.order.index_select(1, pos)
        pixels = self.pixels
        if self.transition_steps:
            pixels = self.mix(step, self.pixels.unsqueeze(1), self.previous.unsqueeze(1))
        return self.inputs(idx, pixels), self.labels[idx]

    def probe(self, task_index):
        return self.inputs(self.order[:, : self.protocol.probe_size], self.pixels)
