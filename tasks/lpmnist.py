"""Label-permuted MNIST (``lpmnist``): UPGD's label-permuted EMNIST protocol, run on MNIST.

UPGD (Elsayed & Mahmood, ICLR 2024; ``mohmdelsayed/upgd``) has no label-permuted stream of MNIST's
10 digits: its ``core/task/label_permuted_mnist_offline.py`` loads EMNIST ``balanced`` (47 classes)
despite its name. This stream follows ``core/task/label_permuted_emnist.py`` with MNIST in place of
EMNIST. (The weight-clipping repository, ``mohmdelsayed/weight-clipping``, has a
``core/task/label_permuted_mnist.py`` with ``change_freq=5000``, which none of its experiments use.)

Stream: the 60 000 MNIST training images scaled to [−1, 1] (``Normalize((0.5,), (0.5,))``), batch 1.
Task k (2500 samples, ``change_freq=2500``) relabels every image through a fresh uniformly random
permutation of the 10 classes and shows the first 2500 images of a fresh shuffle of the training
set (the reference rebuilds its shuffling ``DataLoader`` at every change). Task 0 is relabelled
too. The reference composes each new permutation with the current labels
(``randperm(n)[targets]``); a composition of independent uniform permutations is again uniform and
independent of the last, so drawing each task's map afresh gives the same stream in distribution.
Network: ``FullyConnectedReLU`` (``core/network/fcn_relu.py``), 784-300-150-10 with ReLU and
``torch.nn.Linear``'s default init. Plain SGD on the cross-entropy with step size 0.01, the best of
UPGD's final EMNIST runs (``experiments/statistics_output_permuted_emnist.py``, ``sgd_grid``, whose
SGD also decays weights by 1e-4: ``--method l2 --set weight_decay=1e-4`` here). Metric: online
accuracy averaged over each task; the score averages every task (``summary_fraction`` 1), as UPGD's
average online accuracy (``core/best_run.py``). UPGD runs 20 seeds.

Protocols: ``paper`` is UPGD's 1M samples (400 tasks, ``experiments/label_permuted_emnist.py``);
``short`` the first 100 tasks; ``smoke`` a 784-32-16-10 net and 3 tasks of 20 steps, for tests.
Diagnostics use the first 1000 images of each new task (a plastibench choice). With
``task.transition=linear:N`` a sample of the first N steps of task k takes its label from task
k − 1's map with probability 1 − t/N.
"""

from __future__ import annotations

from plastibench.registry import register_task

from ._streams import LabelPermutedStream, upgd_protocols


@register_task("lpmnist")
class LabelPermutedMNIST(LabelPermutedStream):
    summary = "label-permuted MNIST (UPGD's EMNIST protocol): 784-300-150-10, new labels every 2500 samples"
    plot_bin_tasks = 2  # UPGD's plots average bins of 5000 samples
    protocols = upgd_protocols("lpmnist", 400, 2500, 0.01, 100, "UPGD's 1M samples: 400 label maps of 2500")
