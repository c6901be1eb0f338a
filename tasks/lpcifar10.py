"""Label-permuted CIFAR-10 (``lpcifar10``), as in UPGD (Elsayed & Mahmood, ICLR 2024).

Restated from ``mohmdelsayed/upgd``: the stream of ``core/task/label_permuted_cifar10.py``, the network
``ConvolutionalNetworkReLU`` of ``core/network/fcn_relu.py`` (l.127-143), the loop of
``core/run/run.py`` and the lengths and step size of ``experiments/label_permuted_cifar10.py`` and
``experiments/statistics_output_permuted_cifar10.py``.

Stream: the 50 000 CIFAR-10 training images (``plastibench.data.cifar10``), ``[3, 32, 32]``, every
channel scaled to [−1, 1] (``ToTensor`` then ``Normalize((0.5,), (0.5,))``, l.44-47). Batch 1.
Task k (2500 samples, ``change_freq=2500``, l.13) relabels every image through a fresh uniformly
random permutation of the 10 classes (l.18, l.58-60) and shows the first 2500 images of a fresh
shuffle of the training set; task 0 is relabelled too (as ``lpemnist``, whose note on composed
permutations applies).
Network (``BatchedConvNet``): conv 5x5 3->6, 2x2 max-pool, conv 5x5 6->16, 2x2 max-pool, flatten
16x5x5 = 400, fc 400->120, ReLU, fc 120->84, ReLU, fc 84->10; no padding; PyTorch's default init
(weights and biases U(±1/√fan_in)). As in the reference, **no nonlinearity follows a conv** (conv
then max-pool): its only hidden units are the 120 + 84 of the fc layers (the ``n_units`` of its
``ConvolutionalNetworkReLUWithHooks``), so unit-level methods (CBP, ReDo, SNR, CReLU, ...) act on
those, and weight-level ones on every layer. Plain SGD on the cross-entropy with step size 0.01, the
step size of UPGD's final SGD runs (``statistics_output_permuted_cifar10.py`` l.51-57, ``sgd_grid``,
whose SGD also decays weights by 1e-3: ``--method l2 --set weight_decay=1e-3`` here). Metric:
online accuracy averaged over each task; the score averages every task (``summary_fraction`` 1), as
UPGD's average online accuracy (``core/best_run.py``). UPGD runs 20 seeds
(``experiments/label_permuted_cifar10.py`` l.14).

Protocols: ``paper`` is UPGD's 1M samples (``n_steps = 1000000``, l.13: 400 tasks); ``short`` the
first 100 tasks; ``smoke`` the same layers at widths 2, 4, 8, 8 and 3 tasks of 20 steps, for tests.
Diagnostics use the first 1000 images of each new task (a plastibench choice). With
``task.transition=linear:N`` a sample of the first N steps of task k takes its label from task
k − 1's map with probability 1 − t/N.
"""

from __future__ import annotations

from plastibench.registry import register_task
from plastibench.vision import BatchedConvNet

from ._streams import LabelPermutedStream, upgd_protocols


def _net(widths: list[int]) -> dict:
    return {"kernels": [5, 5], "widths": widths, "conv_activation": False, "activation": "relu"}


@register_task("lpcifar10")
class LabelPermutedCIFAR10(LabelPermutedStream):
    summary = "label-permuted CIFAR-10 (UPGD): its small conv net, new labels every 2500 samples, batch 1"
    plot_bin_tasks = 2  # UPGD's plots average bins of 5000 samples
    dataset = "cifar10"
    protocols = upgd_protocols("lpcifar10", 400, 2500, 0.01, 100, "UPGD's 1M samples: 400 label maps of 2500",
                               net=_net([6, 16, 120, 84]), smoke_net=_net([2, 4, 8, 8]))

    def network(self, seeds=None):
        cfg = self.protocol.settings
        return BatchedConvNet(self.seeds if seeds is None else seeds, num_classes=cfg["classes"],
                              activation=cfg["activation"], widths=tuple(cfg["widths"]),
                              kernels=tuple(cfg["kernels"]), conv_activation=cfg["conv_activation"])
