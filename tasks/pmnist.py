"""Online permuted MNIST (``pmnist``), as in the Nature paper.

Restated from ``lop/permuted_mnist/online_expr.py`` of ``shibhansh/loss-of-plasticity``. Only the
60 000 MNIST training images are used, scaled to [0, 1] and flattened to 784. Each task draws a
random pixel permutation and applies it to the *current* (already permuted) images, so the
permutations compose, then reshuffles the example order (also composed, as the reference does);
the learner makes one pass over the 60 000 images, one example per step (online, batch 1).
The network is 784-2000-2000-2000-10 with ReLU (Kaiming-uniform init, biases 0), trained by plain
SGD with step size 0.003 on the cross-entropy. The metric is online accuracy: whether the
prediction made *before* the update on each example is right, averaged over the task.
Diagnostics use the first 2000 images of each new task, as the reference (rank, dead units at the
start of every task, before training on it).

Protocols: ``paper`` is the reference's 800 tasks (48M steps); ``short`` keeps every setting
for the first 100 tasks (6M steps, an eighth of the paper's stream; a budget of GPU-hours for
10 seeds, chosen because the paper's backprop curve peaks early; that its decline is already
visible at 100 tasks is still to be measured on a GPU);
``smoke`` shrinks the net to 784-32-32-32-10 and each task to 200 steps, for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plastibench import rng
from plastibench.data.mnist import load_mnist
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task
from plastibench.task import Task

_SGD = OptimizerSpec(name="sgd", lr=0.003)
_PIXELS = 784


def _protocol(name, n_tasks, steps, width, description, probe=2000, seeds=10) -> Protocol:
    return Protocol(task="pmnist", name=name, version=1, n_tasks=n_tasks, steps_per_task=steps, batch_size=1,
                    optimizer=_SGD, metric="online_accuracy", higher_is_better=True, probe_size=probe,
                    default_seeds=seeds, description=description,
                    settings={"width": width, "hidden_layers": 3, "activation": "relu", "classes": 10})


@register_task("pmnist")
class PermutedMNIST(Task):
    summary = "online permuted MNIST: 784-2000-2000-2000-10, one pass per permutation, batch 1"
    plot_bin_tasks = 1  # one task = 60 000 examples, as lop/permuted_mnist/plots
    online = True
    protocols = {
        "paper": _protocol("paper", 800, 60_000, 2000, "the reference's 800 tasks of 60k online steps"),
        "short": _protocol("short", 100, 60_000, 2000, "100 tasks, every other setting as the paper"),
        "smoke": _protocol("smoke", 3, 200, 32, "seconds, for tests", probe=64, seeds=2),
    }

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        split = load_mnist(self.data_dir, "train", verify=self.verify)
        self.data = {"mnist": {"sha256": split.sha256, "verified": split.verified, "images": len(split.labels)}}
        self.images = torch.from_numpy(split.images.reshape(len(split.labels), _PIXELS)).to(self.device)
        self.labels = torch.from_numpy(split.labels.astype("int64")).to(self.device)
        s = seeds.numel()
        self.current = -1
        self.pixels = torch.arange(_PIXELS, device=self.device).expand(s, -1).clone()
        self.order = torch.arange(len(self.labels), device=self.device).expand(s, -1).clone()
        self._rows = torch.arange(protocol.batch_size, device=self.device)

    def network(self, seeds=None):
        cfg = self.protocol.settings
        sizes = (_PIXELS, *[cfg["width"]] * cfg["hidden_layers"], cfg["classes"])
        return BatchedMLP(MLPSpec(sizes, cfg["activation"]), self.seeds if seeds is None else seeds)

    def start_task(self, task_index):
        if task_index < self.current:
            raise RuntimeError("permuted MNIST tasks must be started in order")
        while self.current < task_index:
            self.current += 1
            n = len(self.labels)
            self.pixels = self.pixels.gather(1, rng.permutation(self.seeds, self.current, "pixels", _PIXELS))
            self.order = self.order.gather(1, rng.permutation(self.seeds, self.current, "order", n))

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx[S, B]`` under each seed's current pixel permutation, ``[S, B, 784]`` in [0, 1]."""
        x = self.images[idx]
        x = x.gather(2, self.pixels.unsqueeze(1).expand(-1, idx.shape[1], -1))
        return x.float().div_(255.0)

    def batch(self, task_index, step):
        pos = (step * self.protocol.batch_size + self._rows) % len(self.labels)
        idx = self.order.index_select(1, pos)
        return self._inputs(idx), self.labels[idx]

    def loss(self, out, y):
        s, b, c = out.shape
        return F.cross_entropy(out.reshape(s * b, c), y.reshape(-1), reduction="none").view(s, b).mean(1)

    def step_metric(self, out, y, loss):
        return (out.argmax(-1) == y).float().mean(1)

    def probe(self, task_index):
        return self._inputs(self.order[:, : self.protocol.probe_size])

    def data_record(self):
        return self.data

    def state_dict(self):
        return {**super().state_dict(), "current": self.current, "pixels": self.pixels.clone(),
                "order": self.order.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.current = state["current"]
        self.pixels = state["pixels"].to(self.device)
        self.order = state["order"].to(self.device)
