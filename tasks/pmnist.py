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

With ``task.transition=linear:N`` a sample of the first N steps of task k shows its image under task
k − 1's permutation with probability 1 − t/N (the example order is task k's).
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task

from ._streams import PIXELS, PixelPermutedStream

_SGD = OptimizerSpec(name="sgd", lr=0.003)


def _protocol(name, n_tasks, steps, width, description, probe=2000, seeds=10) -> Protocol:
    return Protocol(task="pmnist", name=name, version=1, n_tasks=n_tasks, steps_per_task=steps, batch_size=1,
                    optimizer=_SGD, metric="online_accuracy", higher_is_better=True, probe_size=probe,
                    default_seeds=seeds, description=description,
                    settings={"width": width, "hidden_layers": 3, "activation": "relu", "classes": 10})


@register_task("pmnist")
class PermutedMNIST(PixelPermutedStream):
    summary = "online permuted MNIST: 784-2000-2000-2000-10, one pass per permutation, batch 1"
    plot_bin_tasks = 1  # one task = 60 000 examples, as lop/permuted_mnist/plots
    protocols = {
        "paper": _protocol("paper", 800, 60_000, 2000, "the reference's 800 tasks of 60k online steps"),
        "short": _protocol("short", 100, 60_000, 2000, "100 tasks, every other setting as the paper"),
        "smoke": _protocol("smoke", 3, 200, 32, "seconds, for tests", probe=64, seeds=2),
    }
    state_names = ("current", "pixels", "previous", "order")

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        s = seeds.numel()
        self.current = -1
        self.pixels = torch.arange(PIXELS, device=self.device).expand(s, -1).clone()
        self.previous = self.pixels
        self.order = torch.arange(len(self.labels), device=self.device).expand(s, -1).clone()

    def hidden_sizes(self):
        return (self.protocol.settings["width"],) * self.protocol.settings["hidden_layers"]

    def start_task(self, task_index):
        if task_index < self.current:
            raise RuntimeError("permuted MNIST tasks must be started in order")
        while self.current < task_index:
            self.current += 1
            n = len(self.labels)
            pixels = self.pixels.gather(1, rng.permutation(self.seeds, self.current, "pixels", PIXELS))
            self.previous = pixels if self.current == 0 else self.pixels
            self.pixels = pixels
            self.order = self.order.gather(1, rng.permutation(self.seeds, self.current, "order", n))
