"""Continual ImageNet (``cimagenet``): a long sequence of binary tasks on ImageNet 32x32 class pairs.

Restated from ``lop/imagenet/single_expr.py`` of ``shibhansh/loss-of-plasticity`` (Dohare et al.,
Nature 2024, Fig. 1). Data: the per-class store written by ``plastibench data import imagenet32``
or ``data import reference-archive`` (700 images per class; rows 0-599 train, 600-699 test).

Stream, per seed: a permutation of the classes present, tiled as the reference tiles it, so that
task t uses the classes ``order[2t mod C]`` (label 0) and ``order[2t+1 mod C]`` (label 1), C the
number of classes in the store (1000 for the paper; a partial import runs on what it has, and the
count is recorded). The order is the reference's own ``class_order[seed]`` when the store came from
the reference archive with all 1000 classes and its ``class_order`` (so seed i reproduces the
paper's run i on identical data), else a counter-based permutation keyed by the seed.

Training, per task: the output layer's weights and bias are zeroed at the start of every task
(the reference's ``new_heads``; momentum buffers carry over, nothing else is reset); 250 epochs over
the 1200 training images (600 per class), reshuffled every epoch, mini-batch 100, 12 steps an
epoch, 3000 SGD steps (lr 0.01, momentum 0.9) on the cross-entropy. The network is the paper's
ConvNet (``plastibench.vision.BatchedConvNet``, 2 outputs). The metric is the test accuracy on the
task's 200 test images after the final epoch (the reference's ``test_accuracies[:, -1]``); plots bin
it by 50 tasks, as ``lop/imagenet/bp_plot.py``.

Inputs. Known, from the reference code: ``load_imagenet`` (``single_expr.py``; the same in the
first commit's ``online_batch_expr.py``) ``np.load``s ``data/classes/<c>.npy``, and the task loop
casts it with ``.type(torch.FloatTensor)``: nothing in ``lop/imagenet`` divides by 255,
normalises or augments. Whatever scale the inputs have is the archive's (the Google Drive file
linked from ``lop/imagenet/README.md``). Assumed, not verified: a loader by a co-author for "the
same dataset as the Nature paper" (``JFernando4/Research_Project_Manager``,
``mlproj_manager/problems/supervised_learning/imagenet/image_net_dataloader.py``) states statistics
"computed using the entire dataset": mean 0.00033, standard deviation 0.260, max |x| 0.630. So the
archive holds floats that are already scaled and about zero-centred, not 0..255 pixels; they fit
x/255 minus a per-pixel mean, but that is an inference. Which 700 images per class it holds, and how
they were downsampled, is not stated anywhere.

So the protocol names its ``input_transform`` (hashed), and the task applies it whatever the
store's dtype, after checking the value range of the loaded images (:data:`INPUT_TRANSFORMS`):

* ``div255``: x · (1/255), for raw 0..255 pixels (the official Imagenet32 batches, imported as uint8):
  inputs in [0, 1]. Refuses values outside [0, 255] or none above 1 (already scaled).
  A deliberate deviation: these inputs are not centred as the archive's appear to be, because
  the centring is unverified; a score on them is not a score on the paper's inputs.
* ``as_stored``: x unchanged, as the reference feeds its archive. Refuses values outside [-1, 1]
  (raw pixels, which the archive is reported not to hold).

The data record of a run (``Task.data_record``, part of its identity) states the store's source
(``Imagenet32 official batches`` or ``reference archive``), dtype and value range, and the transform.

``task.transition=linear:N`` (issue 13): in-task step t < N of task k ≥ 1 draws its examples as
usual (label and store row from the epoch's order) and shows each one, with probability 1 − t/N
(``Task.from_new``), as the image of the same row of task k − 1's class of that label: the old pair's
images keep their old labels (a binary task throughout, the head zeroed at task k's start as
always). The held-out test accuracy is task k's alone. ``abrupt``, the default, is unchanged.

Protocols: ``paper`` is 5000 tasks (15 M steps) for every method: the length of the reference's
CBP, L2 and S&P runs. The reference's backprop ran 2000 tasks only (``cfg/bp.json``): compare
backprop with the paper's BP curve with ``plastibench compare --at-task 2000 RUN_DIR...``, the score
this protocol gives the first 2000 tasks (the mean over tasks 1801-2000; the per-task metric of
every task is in ``metrics.csv``). A prefix of the stream does not depend on ``n_tasks``, so that
is the score of a 2000-task run. ``short`` keeps every setting for the first 1000 tasks (3 M steps
per seed): in the paper's Fig. 1b backprop at step size 0.01 is at its best in the first tasks and
declines from then on, so a fifth of the stream shows the decline at a fifth of the cost (the
reference code would take about 6 A100-hours per seed for it, from its README's 12 hours per 2000
tasks; our GPU rate is still to be measured, see docs/benchmarks.md). How far backprop has fallen
by task 1000 on our engine is to be confirmed by the first GPU run. Both feed the official
Imagenet32 batches (``div255``); ``paper-archive`` and ``short-archive`` are the same on the
reference archive (``as_stored``). ``smoke`` is 3 tasks of 8 steps on 20 training and 20 test images
per class (``div255``), for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plastibench import rng
from plastibench.data.imagenet32 import TRAIN_PER_CLASS, load_imagenet32_store
from plastibench.data.paths import DataUnavailable
from plastibench.evaluate import accuracy, chunks
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task
from plastibench.task import BOUNDARIES, TRANSITION, Task, cross_entropy, into
from plastibench.vision import BatchedConvNet

_SGD = OptimizerSpec(name="sgd", lr=0.01, momentum=0.9)
CLASSES_PER_TASK = 2
ARCHIVE = "-archive"  # suffix of the protocols that feed the reference archive as stored


@dataclass(frozen=True)
class InputTransform:
    """Network input = stored value · ``scale``, for stores whose values lie in [``low``, ``high``]
    with a maximum above ``above`` (see the module docstring)."""

    scale: float
    low: float
    high: float
    above: float
    expects: str


INPUT_TRANSFORMS = {
    "div255": InputTransform(1 / 255, 0.0, 255.0, 1.0, "raw 0..255 pixels (the official Imagenet32 "
                             "batches), which it divides by 255"),
    "as_stored": InputTransform(1.0, -1.0, 1.0, -np.inf, "already scaled values within [-1, 1] (the "
                                "reference archive's are reported to lie within ±0.63), which it feeds "
                                "unchanged, as the reference does"),
}


def _protocol(name: str, n_tasks: int, epochs: int, description: str, *, batch: int = 100,
              train_per_class: int = 600, test_per_class: int = 100, probe: int = 200,
              seeds: int = 30, transform: str = "div255") -> Protocol:
    steps_per_epoch = CLASSES_PER_TASK * train_per_class // batch
    return Protocol(task="cimagenet", name=name, version=2, n_tasks=n_tasks, steps_per_task=epochs * steps_per_epoch,
                    batch_size=batch, optimizer=_SGD, metric="test_accuracy", higher_is_better=True,
                    probe_size=probe, default_seeds=seeds, description=description,
                    settings={"epochs": epochs, "train_per_class": train_per_class,
                              "test_per_class": test_per_class, "zero_head": True, "input_transform": transform,
                              "reference_class_order": True})


_PAPER = ("5000 tasks of 250 epochs (the reference's CBP/L2/S&P length; its BP ran 2000: compare BP with "
          "`plastibench compare --at-task 2000`)")
_SHORT = "the first 1000 tasks, every other setting as the paper"
_OFFICIAL = "; official Imagenet32 batches, pixels / 255"
_AS_STORED = "; reference archive, values as stored"


@register_task("cimagenet")
class ContinualImageNet(Task):
    summary = "Continual ImageNet: binary tasks on ImageNet 32x32 class pairs, ConvNet, 250 epochs each"
    plot_bin_tasks = 50  # as lop/imagenet/bp_plot.py
    options = {**BOUNDARIES, **TRANSITION}  # task.boundaries=hidden: the task's own per-task set-up still runs
    protocols = {
        "paper": _protocol("paper", 5000, 250, _PAPER + _OFFICIAL),
        "short": _protocol("short", 1000, 250, _SHORT + _OFFICIAL, seeds=10),
        "paper" + ARCHIVE: _protocol("paper" + ARCHIVE, 5000, 250, _PAPER + _AS_STORED, transform="as_stored"),
        "short" + ARCHIVE: _protocol("short" + ARCHIVE, 1000, 250, _SHORT + _AS_STORED, seeds=10,
                                     transform="as_stored"),
        "smoke": _protocol("smoke", 3, 2, "seconds, for tests", batch=10, train_per_class=20,
                           test_per_class=20, probe=20, seeds=2),
    }

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        cfg = protocol.settings
        store = load_imagenet32_store(self.data_dir, verify=self.verify)
        if len(store.classes) < CLASSES_PER_TASK:
            raise DataUnavailable(f"The ImageNet 32x32 store {store.root} has {len(store.classes)} class(es); "
                                  "Continual ImageNet needs at least 2. Import more source files "
                                  "(plastibench data import --help).")
        rows = np.r_[0:cfg["train_per_class"], TRAIN_PER_CLASS:TRAIN_PER_CLASS + cfg["test_per_class"]]
        images = np.stack([store.images(c)[rows] for c in store.classes])
        value_range = [float(images.min()), float(images.max())]
        self.scale = self._transform(store, images.dtype, value_range).scale
        self.images = torch.from_numpy(images).to(self.device)  # [C, train + test, 3, 32, 32]
        self.order, order_source = self._class_order(store, cfg["reference_class_order"])
        self.data = {"imagenet32": {
            "source": store.manifest.get("source"), "classes": len(store.classes), "class_order": order_source,
            "dtype": str(images.dtype), "value_range": value_range, "input_transform": cfg["input_transform"],
            "selection": store.manifest.get("selection_rule"), "pixel_scale": store.manifest.get("pixel_scale"),
            "verified": self.verify,
            "sha256": {str(c): store.manifest["classes"][str(c)]["sha256"] for c in store.classes},
        }}
        self.pair = None
        self._epoch_key, self._epoch_order = None, None
        self._rows = torch.arange(protocol.batch_size, device=self.device)

    def _transform(self, store, dtype, value_range: list[float]) -> InputTransform:
        """The protocol's input transform, refused (``DataUnavailable``, saying what to do) when the
        loaded images' values are not what it expects."""
        name = self.protocol.settings["input_transform"]
        t = INPUT_TRANSFORMS[name]
        lo, hi = value_range
        if t.low <= lo and hi <= t.high and hi > t.above:
            return t
        other = "as_stored" if name == "div255" else "div255"
        base = self.protocol.name.removesuffix(ARCHIVE)
        twin = base + ARCHIVE if other == "as_stored" else base
        use = f"protocol {twin}" if twin in type(self).protocols else "a protocol"
        raise DataUnavailable(
            f"Protocol {self.protocol.name} has input_transform {name!r}, for {t.expects}; but the ImageNet "
            f"32x32 store {store.root} ({store.manifest.get('source')}, {dtype}) holds values in "
            f"[{lo:g}, {hi:g}]. Run it with {use} (input_transform {other!r}: "
            f"{INPUT_TRANSFORMS[other].expects}), or import the data that protocol expects: "
            "plastibench data import imagenet32 SRC (official batches, for div255) or "
            "plastibench data import reference-archive SRC (Dohare et al.'s archive, for as_stored).")

    def _class_order(self, store, use_reference: bool) -> tuple[torch.Tensor, str]:
        """Per-seed class positions ``[S, C]`` (indexes into the store's sorted classes)."""
        n = len(store.classes)
        ref = store.class_order
        if use_reference and ref is not None and n == ref.shape[1] and sorted(ref[0]) == list(store.classes):
            position = {c: i for i, c in enumerate(store.classes)}
            rows = ref[self.seeds.cpu().numpy() % len(ref)]
            table = np.vectorize(position.__getitem__)(rows)
            return torch.as_tensor(table, dtype=torch.int64, device=self.device), "reference class_order[seed]"
        return rng.permutation(self.seeds, 0, "cimagenet/class_order", n), "permutation keyed by seed"

    def network(self, seeds=None):
        return BatchedConvNet(self.seeds if seeds is None else seeds, num_classes=CLASSES_PER_TASK)

    # ----- the stream -----
    def _pair(self, task_index: int) -> torch.Tensor:
        """Task ``task_index``'s ``[S, 2]`` class positions; label = column."""
        n = self.order.shape[1]
        cols = torch.tensor([(2 * task_index) % n, (2 * task_index + 1) % n], device=self.device)
        return self.order[:, cols]

    def start_task(self, task_index):
        self.pair = self._pair(task_index)
        if self.transition_steps:
            self.previous = self._pair(max(task_index - 1, 0))

    def begin_task(self, task_index, net, optimizer):
        if self.protocol.settings["zero_head"]:
            with torch.no_grad():
                net.fc3.weight.zero_()
                net.fc3.bias.zero_()

    def _images(self, label: torch.Tensor, row: torch.Tensor, pair: torch.Tensor | None = None) -> torch.Tensor:
        """Images of class ``pair[label]`` (default: the task's pair), store row ``row`` (both
        ``[S, B]``; ``pair`` ``[S, 2]`` or per sample ``[S, B, 2]``) as float ``[S, B, 3, 32, 32]``."""
        pair = self.pair if pair is None else pair
        cls = pair.gather(1, label) if pair.dim() == 2 else pair.gather(2, label.unsqueeze(-1)).squeeze(-1)
        return self.images[cls, row].float().mul_(self.scale)

    def _steps_per_epoch(self) -> int:
        return CLASSES_PER_TASK * self.protocol.settings["train_per_class"] // self.protocol.batch_size

    def segment_every(self, task_index):
        return self._steps_per_epoch()

    def start_segment(self, task_index, step):
        """The epoch's order of the task's training examples, ``[S, 2·train_per_class]``, written
        into one persistent buffer (the steps read it in place)."""
        epoch = step // self._steps_per_epoch()
        if self._epoch_key != (task_index, epoch):
            n = CLASSES_PER_TASK * self.protocol.settings["train_per_class"]
            key = task_index * (self.protocol.settings["epochs"] + 1) + epoch
            self._epoch_order = into(self._epoch_order, rng.permutation(self.seeds, key, "cimagenet/epoch", n))
            self._epoch_key = (task_index, epoch)

    def batch(self, task_index, step):
        per_class = self.protocol.settings["train_per_class"]
        k = step % self._steps_per_epoch()
        idx = self._epoch_order.index_select(1, k * self.protocol.batch_size + self._rows)
        label = idx // per_class
        if not self.transition_steps:
            return self._images(label, idx % per_class), label
        pair = torch.where(self.from_new(step).unsqueeze(-1), self.pair.unsqueeze(1), self.previous.unsqueeze(1))
        return self._images(label, idx % per_class, pair), label

    def loss(self, out, y):
        return cross_entropy(out, y)

    def _split(self, first_row: int, per_class: int):
        """Label and row tensors ``[S, 2·per_class]`` of both classes' rows from ``first_row``."""
        s = self.seeds.numel()
        label = torch.arange(CLASSES_PER_TASK, device=self.device).repeat_interleave(per_class).expand(s, -1)
        row = (first_row + torch.arange(per_class, device=self.device)).repeat(CLASSES_PER_TASK).expand(s, -1)
        return label, row

    def end_task(self, task_index, net):
        super().end_task(task_index, net)  # reset the per-step accumulator; the metric is held out
        cfg = self.protocol.settings
        label, row = self._split(cfg["train_per_class"], cfg["test_per_class"])
        batches = ((self._images(label[:, c], row[:, c]), label[:, c])
                   for c in chunks(label.shape[1], self.protocol.batch_size))
        return accuracy(net, batches)

    def probe(self, task_index):
        label, row = self._split(0, self.protocol.probe_size // CLASSES_PER_TASK)
        return self._images(label, row)

    def data_record(self):
        return self.data
