"""Input-permuted MNIST (``ipmnist``), as in UPGD (Elsayed & Mahmood, ICLR 2024).

Restated from ``mohmdelsayed/upgd``: the stream of ``core/task/input_permuted_mnist.py``, the network
``FullyConnectedReLU`` of ``core/network/fcn_relu.py``, the loop of ``core/run/run.py`` and the
lengths and step size of ``experiments/input_permuted_mnist.py`` and
``experiments/statistics_input_permuted_mnist.py``.

Stream: the 60 000 MNIST training images, each scaled to [−1, 1] (``ToTensor`` then
``Normalize((0.5,), (0.5,))``) and flattened. Task k (5000 samples, ``change_freq=5000``) draws a
fresh pixel permutation of the original images (not composed with the previous one) and a fresh
shuffle of the training set (the reference rebuilds its shuffling ``DataLoader`` at every
permutation) and shows its first 5000 images, one per step (batch 1). Task 0 is permuted too.
Network: 784-300-150-10 with ReLU, ``torch.nn.Linear``'s default init (weights and biases
U(±1/√fan_in)). Plain SGD on the cross-entropy with step size 0.001: the best step size of UPGD's
final runs (``statistics_input_permuted_mnist.py``, ``sgd_grid``), whose SGD also decays weights by
0.001 (the paper's SGDW: ``--method l2 --set weight_decay=1e-3`` here).
Metric: online accuracy (the prediction made before the update), averaged over each task; the score
averages every task (``summary_fraction`` 1), as UPGD's "average online accuracy" averages the whole
stream (``core/best_run.py``). UPGD runs 20 seeds.

Protocols: ``paper`` is UPGD's 1M samples (200 tasks); ``short`` the first 50 tasks; ``smoke`` a
784-32-16-10 net and 3 tasks of 20 steps, for tests. Diagnostics use the first 1000 images of each
new task (a plastibench choice; UPGD measures none on this stream). A task longer than the training
set (in no protocol) would wrap around its shuffle. With ``task.transition=linear:N`` a sample of the
first N steps of task k shows its image under task k − 1's permutation with probability 1 − t/N.
"""

from __future__ import annotations

from plastibench import rng
from plastibench.registry import register_task

from ._streams import PIXELS, PixelPermutedStream, upgd_protocols


@register_task("ipmnist")
class InputPermutedMNIST(PixelPermutedStream):
    summary = "input-permuted MNIST (UPGD): 784-300-150-10, a new permutation every 5000 samples, batch 1"
    plot_bin_tasks = 1  # UPGD's plots average bins of 5000 samples, one task
    protocols = upgd_protocols("ipmnist", 200, 5000, 0.001, 50, "UPGD's 1M samples: 200 permutations of 5000")

    def _pixels(self, task_index: int):
        return rng.permutation(self.seeds, task_index, "pixels", PIXELS)

    def start_task(self, task_index):
        self.pixels = self._pixels(task_index)
        self.previous = self._pixels(max(task_index - 1, 0))
        self.order = rng.permutation(self.seeds, task_index, "order", len(self.labels))
