"""Label-permuted EMNIST (``lpemnist``), as in UPGD (Elsayed & Mahmood, ICLR 2024).

Restated from ``mohmdelsayed/upgd``: the stream of ``core/task/label_permuted_emnist.py``, the network
``FullyConnectedReLU`` of ``core/network/fcn_relu.py`` (l.63-74), the loop of ``core/run/run.py`` and
the lengths and step size of ``experiments/label_permuted_emnist.py`` and
``experiments/statistics_output_permuted_emnist.py``.

Stream: the 112 800 EMNIST ``balanced`` training images (l.38-43; ``plastibench.data.emnist``), each
scaled to [−1, 1] (``ToTensor`` then ``Normalize((0.5,), (0.5,))``, l.46-47) and flattened as stored
(EMNIST stores characters transposed; torchvision and UPGD do not undo it, nor do we). Batch 1.
Task k (2500 samples, ``change_freq=2500``, l.13) relabels every image through a fresh uniformly
random permutation of the 47 classes (``n_outputs = 47``, l.18) and shows the first 2500 images of
a fresh shuffle of the training set (the reference rebuilds its shuffling ``DataLoader`` at every
change, l.60-62). Task 0 is relabelled too. The reference composes each new permutation with the
current labels (``randperm(47)[targets]``, l.61); a composition of independent uniform permutations
is again uniform and independent of the last, so drawing each task's map afresh gives the same
stream in distribution. Network: 784-300-150-47 with ReLU and ``torch.nn.Linear``'s default init
(weights and biases U(±1/√fan_in)). Plain SGD on the cross-entropy with step size 0.01, the
step size of UPGD's final SGD runs (``statistics_output_permuted_emnist.py`` l.51-57, ``sgd_grid``,
whose SGD also decays weights by 1e-4: ``--method l2 --set weight_decay=1e-4`` here). Metric: online
accuracy (the prediction made before the update), averaged over each task; the score averages every
task (``summary_fraction`` 1), as UPGD's average online accuracy (``core/best_run.py``). UPGD runs
20 seeds (``experiments/label_permuted_emnist.py`` l.14).

Protocols: ``paper`` is UPGD's 1M samples (``n_steps = 1000000``, l.13: 400 tasks); ``short`` the
first 100 tasks; ``smoke`` a 784-32-16-47 net and 3 tasks of 20 steps, for tests. Diagnostics use
the first 1000 images of each new task (a plastibench choice). With ``task.transition=linear:N`` a
sample of the first N steps of task k takes its label from task k − 1's map with probability
1 − t/N.
"""

from __future__ import annotations

from plastibench.registry import register_task

from ._streams import LabelPermutedStream, upgd_protocols


@register_task("lpemnist")
class LabelPermutedEMNIST(LabelPermutedStream):
    summary = "label-permuted EMNIST (UPGD): 784-300-150-47, new labels every 2500 samples, batch 1"
    plot_bin_tasks = 2  # UPGD's plots average bins of 5000 samples
    dataset = "emnist"
    protocols = upgd_protocols("lpemnist", 400, 2500, 0.01, 100, "UPGD's 1M samples: 400 label maps of 2500",
                               classes=47)
