"""What the MNIST streams share (``pmnist``, ``ipmnist``, ``lpmnist``, ``rlmnist``).

The 60 000 training images live on the device as ``[N, 784]`` uint8; a stream picks images with
per-seed index tensors ``[S, B]`` and turns them into inputs (``inputs``: optionally pixel-permuted,
scaled to [0, 1] or, with ``settings["inputs"] == "symmetric"``, to [−1, 1] as
``Normalize((0.5,), (0.5,))`` does). The network is the seed-batched MLP of the protocol's
``hidden`` sizes (``BatchedMLP``), the loss the cross-entropy, the metric online accuracy: whether
the prediction made *before* the update is right, averaged over the task. Every MNIST stream offers
``task.boundaries`` and ``task.transition`` (``plastibench.task``); ``mix`` applies the transition to
whatever the two tasks differ in (a pixel permutation, a label map).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from plastibench.data.mnist import load_mnist
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.task import BOUNDARIES, TRANSITION, Task

PIXELS = 784


def upgd_protocols(task: str, n_tasks: int, steps: int, lr: float, short_tasks: int, paper: str) -> dict[str, Protocol]:
    """The protocols of a UPGD MNIST stream: batch 1, plain SGD with step size ``lr``, a 784-300-150-10
    ReLU MLP with ``torch.nn.Linear``'s init on inputs in [−1, 1], online accuracy averaged over the
    whole stream (``summary_fraction`` 1), 20 seeds. ``paper``: ``n_tasks`` tasks of ``steps``;
    ``short``: the first ``short_tasks``; ``smoke``: 3 tasks of 20 steps, a 784-32-16-10 net."""

    def protocol(name, n, length, hidden, description, probe=1000, seeds=20):
        return Protocol(task=task, name=name, version=1, n_tasks=n, steps_per_task=length, batch_size=1,
                        optimizer=OptimizerSpec(name="sgd", lr=lr), metric="online_accuracy",
                        higher_is_better=True, summary_fraction=1.0, probe_size=probe, default_seeds=seeds,
                        description=description,
                        settings={"hidden": hidden, "activation": "relu", "init": "default",
                                  "inputs": "symmetric", "classes": 10})

    return {"paper": protocol("paper", n_tasks, steps, [300, 150], paper),
            "short": protocol("short", short_tasks, steps, [300, 150],
                              f"the first {short_tasks} tasks, every other setting as the paper"),
            "smoke": protocol("smoke", 3, 20, [32, 16], "seconds, for tests", probe=64, seeds=2)}


class MNISTStream(Task):
    """Base of the MNIST streams; ``state_names`` are the attributes a checkpoint keeps."""

    online = True
    options = {**BOUNDARIES, **TRANSITION}
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        split = load_mnist(self.data_dir, "train", verify=self.verify)
        self.data = {"mnist": {"sha256": split.sha256, "verified": split.verified, "images": len(split.labels)}}
        self.images = torch.from_numpy(split.images.reshape(len(split.labels), PIXELS)).to(self.device)
        self.labels = torch.from_numpy(split.labels.astype("int64")).to(self.device)
        self._rows = torch.arange(protocol.batch_size, device=self.device)

    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(self.protocol.settings["hidden"])

    def network(self, seeds=None):
        cfg = self.protocol.settings
        spec = MLPSpec((PIXELS, *self.hidden_sizes(), cfg["classes"]), cfg["activation"], cfg.get("init", "kaiming"))
        return BatchedMLP(spec, self.seeds if seeds is None else seeds)

    def inputs(self, idx: torch.Tensor, permutation: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``idx[S, B]`` as ``[S, B, 784]`` floats, pixel ``j`` read from ``permutation[..., j]``
        (``[S, 784]`` per seed or ``[S, B, 784]`` per sample) when given."""
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
        s, b, c = out.shape
        return F.cross_entropy(out.reshape(s * b, c), y.reshape(-1), reduction="none").view(s, b).mean(1)

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


class PixelPermutedStream(MNISTStream):
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
