"""Random-label MNIST (``rlmnist``): memorisation, as in L2 Init (Kumar, Marklund & Van Roy).

Kumar et al., "Maintaining plasticity in continual learning via regenerative regularization",
arXiv 2308.11958 (CoLLAs 2025), "Random Label MNIST" (after Lyle et al. 2023). Restated from the
authors' code as read in a public code index that does not name its repository: the environment
``RandomLabelEnv`` / ``RandomLabelMNIST``, ``utils/load_data.py::load_mnist_data``, the network
``nets`` ``MLP``, the loop of ``main.py`` and the launch script of this problem
(``env.params.unique_samples_per_dataset=1200 concept_duration=30000 num_concept_shifts=50
env_batch_size=16``, ``model.num_hidden=2 model.hidden_size=100``).

Stream, per seed: the MNIST training set is shuffled and its first 1200 images kept for the whole
run (``load_mnist_data`` shuffles with the run's seeded generator), scaled to [−1, 1]
(``Normalize((0.5,), (0.5,))``). Task k (30 000 steps of 16 images) assigns the 1200 images a
fresh random shuffle of their true labels (so every digit keeps its count; task 0 is shuffled too).
Within a task the images come in epochs: a fresh shuffle of the 1200, read 16 at a time for
1200/16 − 1 = 74 steps (the code restarts an epoch once ``index + batch >= 1200``, so each epoch
leaves out its last 16 images); a new task starts a new epoch.
Network: 784-100-100-10 with ReLU, ``torch.nn.Linear``'s default init (``init_type='default'``).
Optimizer: Adam, step size 1e-3, the larger of the launch script's Adam values {1e-3, 1e-4} (its
active line sweeps SGD at {1e-2, 1e-3}; which of them the paper's figures used is not stated in the
code). Metric: online accuracy, the accuracy of each step's batch before the update, averaged over
the task (``main.py``: ``curr_task_online_avg_acc``); the score averages every task
(``summary_fraction`` 1: Kumar's total average online accuracy). The launch script runs 3 seeds;
the default here is 10, for a usable confidence interval.

Protocols: ``paper`` is the code's 50 tasks of 30 000 steps; ``short`` the first 10 tasks;
``smoke`` 64 images, batches of 8 (7-step epochs), a 784-32-16-10 net and 3 tasks of 20 steps, for
tests. Diagnostics use the kept images (all 1200, as the code measures activations on a task's
whole data). With ``task.transition=linear:N`` a sample of the first N steps of task k takes its
label from task k − 1's shuffle with probability 1 − t/N.
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task

from ._streams import ImageStream

_ADAM = OptimizerSpec(name="adam", lr=1e-3)


def _protocol(name, n_tasks, steps, subset, batch, hidden, description, seeds=10) -> Protocol:
    return Protocol(task="rlmnist", name=name, version=1, n_tasks=n_tasks, steps_per_task=steps, batch_size=batch,
                    optimizer=_ADAM, metric="online_accuracy", higher_is_better=True, summary_fraction=1.0,
                    probe_size=subset, default_seeds=seeds, description=description,
                    settings={"subset": subset, "hidden": hidden, "activation": "relu", "init": "default",
                              "inputs": "symmetric", "classes": 10})


@register_task("rlmnist")
class RandomLabelMNIST(ImageStream):
    summary = "random-label MNIST (L2 Init): memorise 1200 images whose labels are reshuffled every 30k steps"
    plot_bin_tasks = 1
    online = False  # the same 1200 images, epoch after epoch
    protocols = {
        "paper": _protocol("paper", 50, 30_000, 1200, 16, [100, 100], "the code's 50 tasks of 30k steps"),
        "short": _protocol("short", 10, 30_000, 1200, 16, [100, 100], "the first 10 tasks"),
        "smoke": _protocol("smoke", 3, 20, 64, 8, [32, 16], "seconds, for tests", seeds=2),
    }

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        m = protocol.settings["subset"]
        if m > len(self.labels):
            raise ValueError(f"rlmnist keeps {m} images but the training set has {len(self.labels)}")
        self.subset = rng.permutation(seeds, 0, "subset", len(self.labels))[:, :m].contiguous()
        self.true_labels = self.labels[self.subset]
        self.order = torch.zeros_like(self.subset)  # the epoch's order of the kept images, set per epoch

    def epoch_steps(self) -> int:
        """Steps per epoch: the code's ``index + batch >= subset`` restart (1200/16 − 1 = 74)."""
        return self.protocol.settings["subset"] // self.protocol.batch_size - 1

    def _task_labels(self, task_index: int):
        shuffle = rng.permutation(self.seeds, task_index, "labels", self.protocol.settings["subset"])
        return self.true_labels.gather(1, shuffle)

    def start_task(self, task_index):
        self.task_labels = self._task_labels(task_index)
        self.previous = self._task_labels(max(task_index - 1, 0))

    def segment_every(self, task_index):
        return self.epoch_steps()

    def start_segment(self, task_index, step):
        epoch = step // self.epoch_steps()
        self.order.copy_(rng.permutation(self.seeds, epoch, f"order/{task_index}", self.order.shape[1]))

    def batch(self, task_index, step):
        pos = (step % self.epoch_steps()) * self.protocol.batch_size + self._rows
        slot = self.order.index_select(1, pos)
        y = self.task_labels.gather(1, slot)
        if self.transition_steps:
            y = self.mix(step, y, self.previous.gather(1, slot))
        return self.inputs(self.subset.gather(1, slot)), y

    def probe(self, task_index):
        return self.inputs(self.subset[:, : self.protocol.probe_size])
