"""The reference-style loop baseline: S seeds trained one after another, one plain model each.

``plastibench bench`` reports how much faster the seed-batched engine is than training the seeds
the way the reference code (``shibhansh/loss-of-plasticity``) does: one ``torch.nn`` model and
one ``torch.optim`` optimizer per seed, driven by a Python loop. Both measurements come from one
run on one machine, on the same task object (hence the same batches), the same initial weights
and the same protocol, so their ratio is the speed-up.

Per step, :meth:`LoopBaseline.step` draws the batch ``x[S, B, ...], y[S, B, ...]`` once for all
seeds (``task.batch(0, step)``, the step passed as a 0-dim int64 device tensor, or as an int to
a task whose ``batch`` cannot take one) and then, for each
seed s in turn:

* ``out, features = model_s(x[s])``: a plain ``nn.Module`` of the task's architecture (an
  ``nn.Sequential`` of ``nn.Linear`` and activations for ``scr``/``pmnist``, the reference ConvNet
  of ``nn.Conv2d``/``nn.MaxPool2d``/``nn.Linear`` for ``cimagenet``, a ResNet-18 of ``nn.Conv2d``/
  ``nn.BatchNorm2d`` for ``icifar100``), initialised with seed s's slice of ``task.network()``;
* the reference's plain loss on the seed's batch (``F.mse_loss`` for ``scr``, ``F.cross_entropy``
  for ``pmnist``/``cimagenet``, ``F.cross_entropy`` over the seed's seen-class logits
  ``out[:, order_s[:seen]]`` for ``icifar100``; other tasks use ``task.loss`` on a 1-seed slice);
* the online metric, accumulated on the device as the engine's ``task.observe`` does (the reference
  copies it to the host every step, which costs a sync that this baseline does not pay);
* ``zero_grad``, ``backward``, ``step`` of the seed's ``torch.optim`` optimizer (the protocol's
  ``OptimizerSpec`` through :func:`plastibench.method.make_optimizer`, torch's default
  implementation choice);
* for ``cbp``: the reference's generate-and-test, per seed (:class:`SeedGnT`: GnT for MLPs,
  ConvGnT for the ConvNet), with the same hyperparameters as the engine's ``cbp``.

``icifar100`` also does, at every epoch end, what the engine's ``task.after_step`` does (the
reference does it too): a per-seed validation pass in eval mode over the seen classes' validation
images, a copy of the seed's ``state_dict`` when its accuracy improved (a host comparison, as the
reference), and the learning-rate schedule. ``cbp`` on ``icifar100`` (ResGnT) is not offered.

Not done, as :func:`plastibench.bench.seed_steps_per_second` does not do it either: task
boundaries (``begin_task``), probes and checkpoints; the timing stays inside task 0.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .method import make_optimizer
from .nn import BatchedMLP, init_bound
from .protocol import Protocol
from .registry import METHODS, TASKS
from .vision import BatchedConvNet, BatchedResNet18

METHODS_OFFERED = ("bp", "cbp")

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU,
                "swish": nn.SiLU, "elu": nn.ELU}


# ----------------------------------------------------------------------------------------------
# Plain per-seed networks (the reference's nets, with its names for the layers that matter)
# ----------------------------------------------------------------------------------------------

class LoopMLP(nn.Module):
    """The reference's ``DeepFFNN``/``FFNN``: ``layers = Sequential(Linear, act, ..., Linear)``, so
    that ``layers[2i]`` is weight layer i, as GnT indexes it. ``forward`` returns the output and
    the post-activation hidden features."""

    def __init__(self, sizes: tuple[int, ...], activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"the loop baseline has no plain {activation!r} activation")
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            modules.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                modules.append(_ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for i in range(0, len(self.layers) - 1, 2):
            x = self.layers[i + 1](self.layers[i](x))
            features.append(x)
        return self.layers[-1](x), features

    def weight_layers(self) -> list[nn.Module]:
        return list(self.layers[::2])


class LoopConvNet(nn.Module):
    """The reference's ``ConvNet`` (``lop/nets/conv_net.py``): three conv + ReLU + 2x2 max-pool
    stages, flatten, fc, fc, fc; ``forward`` returns the logits and the reference's five features."""

    def __init__(self, widths: tuple[int, ...], num_classes: int):
        super().__init__()
        c1, c2, c3, h1, h2 = widths
        self.conv1 = nn.Conv2d(3, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.conv3 = nn.Conv2d(c2, c3, 3)
        self.fc1 = nn.Linear(c3 * 2 * 2, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x1 = self.pool(F.relu(self.conv1(x)))
        x2 = self.pool(F.relu(self.conv2(x1)))
        x3 = self.pool(F.relu(self.conv3(x2))).flatten(1)
        x4 = F.relu(self.fc1(x3))
        x5 = F.relu(self.fc2(x4))
        return self.fc3(x5), [x1, x2, x3, x4, x5]

    def weight_layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.conv3, self.fc1, self.fc2, self.fc3]


class LoopBasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` with biased convs, as ``lop/nets/torchvision_modified_resnet.py``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(out)) + identity)


class LoopResNet18(nn.Module):
    """The reference's CIFAR ResNet-18: 3x3 stem (no max-pool), four stages of two blocks, global
    average pool, fc. Module names as torchvision's (and :class:`BatchedResNet18`'s)."""

    def __init__(self, widths: tuple[int, ...], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(LoopBasicBlock(inplanes, planes, stride),
                                                     LoopBasicBlock(planes, planes)))
            inplanes = planes
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3))), []


def plain_models(net: nn.Module, device: torch.device | str | None = None) -> list[nn.Module]:
    """One plain model per seed of the seed-batched ``net``, holding exactly seed s's parameters
    (and BatchNorm statistics): ``BatchedMLP``, ``BatchedConvNet`` or ``BatchedResNet18``."""
    if getattr(net, "pre_norms", None) is not None or getattr(net, "post_activation", None) is not None:
        raise ValueError("the loop baseline builds plain nets; this one has extra hidden-site modules")
    n_seeds = next(net.parameters()).shape[0]
    device = next(net.parameters()).device if device is None else torch.device(device)
    rename = lambda key: key  # noqa: E731
    if isinstance(net, BatchedMLP):
        sizes, act = net.spec.sizes, net.spec.activation
        make = lambda: LoopMLP(sizes, act)  # noqa: E731
        rename = lambda key: "layers.{}.{}".format(2 * int(key.split(".")[1]), key.split(".")[2])  # noqa: E731
    elif isinstance(net, BatchedConvNet):
        if net.activation_name != "relu" or net.kernels != BatchedConvNet.KERNELS or not net.conv_activation:
            raise ValueError("the loop baseline's ConvNet is the reference's ReLU net")
        widths = (net.conv1.out_channels, net.conv2.out_channels, net.conv3.out_channels,
                  net.fc1.out_features, net.fc2.out_features)
        classes = net.fc3.out_features
        make = lambda: LoopConvNet(widths, classes)  # noqa: E731
    elif isinstance(net, BatchedResNet18):
        if net.activation_name != "relu":
            raise ValueError("the loop baseline's ResNet-18 is the reference's ReLU net")
        widths = tuple(getattr(net, f"layer{i}")[0].conv1.out_channels for i in range(1, 5))
        classes = net.fc.out_features
        make = lambda: LoopResNet18(widths, classes)  # noqa: E731
    else:
        raise ValueError(f"the loop baseline has no plain equivalent of {type(net).__name__}")
    state = net.state_dict()
    models = []
    for s in range(n_seeds):
        with torch.device(device):
            model = make()
        missing, unexpected = model.load_state_dict({rename(k): v[s] for k, v in state.items()}, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise RuntimeError(f"plain model does not match the batched net: missing {missing}, "
                               f"unexpected {unexpected}")
        models.append(model)
    return models


# ----------------------------------------------------------------------------------------------
# Generate-and-test, per seed, as the reference's GnT / ConvGnT
# ----------------------------------------------------------------------------------------------

def _units(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


class SeedGnT:
    """The reference's GnT (``lop/algos/gnt.py``) and ConvGnT (``convGnT.py``) for one seed's net.

    Same state and the same per-layer Python loop as the reference: ages, utilities and mean
    activations as device vectors updated every step; ``torch.where`` for the mature units and the
    count decided on the host (a device sync per layer and step, as the reference pays); ``topk``
    over the mature units' bias-corrected utilities; the chosen units' incoming weights redrawn
    from U(±bound) (torch's global generator, as the reference), bias and outgoing weights zeroed,
    utility, mean activation and age zeroed. For MLPs the next layer's bias gets GnT's correction
    line (which adds 0 unless ``next_bias_correction``, as in the reference). Hyperparameters:
    those of the engine's ``cbp`` (``replacement_rate``, ``maturity_threshold``, ``decay_rate``,
    ``utility``, ``count_rule``, ``init``).
    """

    def __init__(self, layers: list[nn.Module], hp: Mapping[str, Any], activation: str = "relu"):
        if hp.get("variant", "gnt") != "gnt":
            raise ValueError("the loop baseline's generate-and-test is GnT/ConvGnT (variant gnt)")
        if hp["utility"] not in ("contribution", "zero_contribution", "adaptable_contribution"):
            raise ValueError(f"utility {hp['utility']!r} is not one of GnT's")
        self.layers, self.hp = layers, dict(hp)
        self.conv = any(isinstance(layer, nn.Conv2d) for layer in layers)
        dev = layers[0].weight.device
        n = len(layers) - 1
        zeros = lambda i: torch.zeros(_units(layers[i]), device=dev)  # noqa: E731
        self.util = [zeros(i) for i in range(n)]
        self.bias_corrected_util = [zeros(i) for i in range(n)]
        self.ages = [zeros(i) for i in range(n)]
        self.mean_act = [zeros(i) for i in range(n)]
        self.mean_abs_act = [zeros(i) for i in range(n)] if self.conv else None  # ConvGnT keeps it
        self.pending = [0.0] * n
        self.bounds = []
        self.outputs_per_unit = []  # inputs of the next layer a unit feeds (4 after the flatten)
        for cur, nxt in zip(layers[:-1], layers[1:]):
            fan_in = cur.weight[0].numel()
            scheme = "default" if isinstance(cur, nn.Conv2d) else hp["init"]
            self.bounds.append(init_bound(scheme, fan_in, _units(cur), activation))
            g = nxt.in_features // _units(cur) if isinstance(cur, nn.Conv2d) and isinstance(nxt, nn.Linear) else 1
            self.outputs_per_unit.append(g)

    @torch.no_grad()
    def _update_utility(self, i: int, f: torch.Tensor) -> None:
        d = self.hp["decay_rate"]
        cur, nxt = self.layers[i], self.layers[i + 1]
        g = self.outputs_per_unit[i]
        self.util[i] *= d
        bias_correction = 1 - d ** self.ages[i]
        out_mag = nxt.weight.data.abs().mean(dim=0 if isinstance(nxt, nn.Linear) else (0, 2, 3))
        in_mag = cur.weight.data.abs().mean(dim=1 if isinstance(cur, nn.Linear) else (1, 2, 3))
        self.mean_act[i] *= d
        if self.mean_abs_act is not None:
            self.mean_abs_act[i] *= d
        if isinstance(cur, nn.Linear):
            act, abs_act = f.mean(dim=0), (f.abs().mean(dim=0) if self.conv else None)
        elif g == 1:
            act, abs_act = f.mean(dim=(0, 2, 3)), f.abs().mean(dim=(0, 2, 3))
        else:
            act, abs_act = f.mean(dim=0).view(-1, g).mean(dim=1), f.abs().mean(dim=0).view(-1, g).mean(dim=1)
        self.mean_act[i] += (1 - d) * act
        if self.mean_abs_act is not None:
            self.mean_abs_act[i] += (1 - d) * abs_act
        centre = 0
        if self.hp["utility"] != "contribution":
            centre = self.mean_act[i] / bias_correction
            if isinstance(cur, nn.Conv2d):
                centre = centre.view(1, -1, 1, 1) if g == 1 else centre.repeat_interleave(g).view(1, -1)
        if isinstance(nxt, nn.Linear):
            new_util = out_mag * (f - centre).abs().mean(dim=0)
            if g > 1:
                new_util = new_util.view(-1, g).mean(dim=1)
        else:
            new_util = out_mag * (f - centre).abs().mean(dim=(0, 2, 3))
        if self.hp["utility"] == "adaptable_contribution":
            new_util = new_util / in_mag
        self.util[i] += (1 - d) * new_util
        self.bias_corrected_util[i] = self.util[i] / bias_correction

    def _count(self, i: int, n_eligible: int) -> int:
        rate, rule = self.hp["replacement_rate"], self.hp["count_rule"]
        if rule == "bernoulli":
            expected = rate * n_eligible
            if expected < 1:
                return int(bool(torch.rand(1, device=self.ages[i].device) <= expected))
            return int(expected)
        self.pending[i] += rate * (n_eligible if rule == "accumulate" else _units(self.layers[i]))
        k = int(self.pending[i])
        self.pending[i] -= k
        return k

    @torch.no_grad()
    def gen_and_test(self, features: list[torch.Tensor]) -> None:
        if self.hp["replacement_rate"] == 0:
            return
        chosen = []
        for i, f in enumerate(features):  # test every layer first, as the reference
            self.ages[i] += 1
            self._update_utility(i, f.detach())
            eligible = torch.where(self.ages[i] > self.hp["maturity_threshold"])[0]
            if eligible.shape[0] == 0:
                continue
            k = min(self._count(i, eligible.shape[0]), eligible.shape[0])
            if k == 0:
                continue
            idx = eligible[torch.topk(-self.bias_corrected_util[i][eligible], k)[1]]
            correction_mean = self.mean_act[i][idx].clone() if self.hp["next_bias_correction"] else None
            self.util[i][idx] = 0
            self.mean_act[i][idx] = 0.0
            if self.mean_abs_act is not None:
                self.mean_abs_act[i][idx] = 0.0
            chosen.append((i, idx, k, correction_mean))
        for i, idx, k, correction_mean in chosen:  # then generate, layer by layer
            cur, nxt = self.layers[i], self.layers[i + 1]
            g = self.outputs_per_unit[i]
            cur.weight.data[idx] *= 0.0
            cur.weight.data[idx] += torch.empty(k, *cur.weight.shape[1:], device=cur.weight.device).uniform_(
                -self.bounds[i], self.bounds[i])
            cur.bias.data[idx] *= 0.0
            out_idx = idx
            if g > 1:
                out_idx = (idx * g).repeat_interleave(g) + torch.arange(g, device=idx.device).repeat(k)
            if not self.conv:  # GnT's next-layer bias line (ConvGnT has none)
                mean = self.mean_act[i][idx] if correction_mean is None else correction_mean
                nxt.bias.data += (nxt.weight.data[:, idx] * mean / (1 - self.hp["decay_rate"] ** self.ages[i][idx])
                                  ).sum(dim=1)
            nxt.weight.data[:, out_idx] = 0
            self.ages[i][idx] = 0


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

class LoopBaseline:
    """S plain models and optimizers over one batched task object; :meth:`step` trains all seeds
    one step, one seed after another. ``protocol`` is a name or a :class:`Protocol`; ``hparams``
    overrides ``cbp``'s task defaults (the engine's ``METHODS.get('cbp').hparams_for(task)``)."""

    def __init__(self, method: str, task: str, protocol: str | Protocol, n_seeds: int, *,
                 device: torch.device | str, data_dir: str | Path | None = None, verify: bool = True,
                 hparams: Mapping[str, Any] | None = None):
        if method not in METHODS_OFFERED:
            raise ValueError(f"the loop baseline offers {', '.join(METHODS_OFFERED)}, not {method!r}")
        if method == "cbp" and task == "icifar100":
            raise ValueError("the loop baseline has no per-seed ResGnT: cbp on icifar100 is not offered "
                             "(bp is)")
        task_cls = TASKS.get(task)
        self.protocol = task_cls.protocol(protocol) if isinstance(protocol, str) else protocol
        self.device = torch.device(device)
        self.method, self.task_name = method, task
        seeds = torch.tensor(list(range(n_seeds)), dtype=torch.int64, device=self.device)
        self.task = task_cls(self.protocol, seeds, data_dir=data_dir, verify=verify)
        self.task.start_task(0)
        net = self.task.network()
        self.models = plain_models(net, self.device)
        del net
        self.optimizers = [make_optimizer(list(m.parameters()), self.protocol.optimizer) for m in self.models]
        self.metric_sums = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in self.models]
        self.gnts = None
        if method == "cbp":
            hp = METHODS.get("cbp").hparams_for(task, hparams)
            activation = self.protocol.settings.get("activation", "relu")
            self.gnts = [SeedGnT(m.weight_layers(), hp, activation) for m in self.models]
        self._tensor_steps: bool | None = None
        self._segment_started = False
        self.columns = None
        if task == "icifar100":  # each seed's seen classes, as the reference's all_classes[:seen]
            self.columns = [self.task.order[s, :self.task.seen] for s in range(n_seeds)]
            self.best_accuracy: list[float | None] = [None] * n_seeds
            self.best_state: list[dict | None] = [None] * n_seeds

    def loss(self, s: int, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Seed s's loss on its batch, as the reference computes it."""
        if self.task_name == "scr":
            return F.mse_loss(out, y)
        if self.task_name in ("pmnist", "cimagenet"):
            return F.cross_entropy(out, y)
        if self.task_name == "icifar100":
            return F.cross_entropy(out[:, self.columns[s]], y)
        return self.task.loss(out.unsqueeze(0), y.unsqueeze(0))[0]

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``task.batch(0, step)``, the step as a 0-dim int64 device tensor (where the task API is
        going); a task that still does host arithmetic on the step (a ``TypeError`` on the first
        call) gets a Python int from then on. A task with ``start_segment`` (epoch set-up, in the
        task API being introduced) gets it at every ``segment_every`` boundary, as the engine."""
        start_segment = getattr(self.task, "start_segment", None)  # the task API being introduced
        if start_segment is not None:
            every = self.task.segment_every(0)
            if step == 0 or (every and step % every == 0) or not self._segment_started:
                start_segment(0, step)
                self._segment_started = True
        if self._tensor_steps is None:
            try:
                batch = self.task.batch(0, torch.tensor(step, device=self.device))
                self._tensor_steps = True
                return batch
            except TypeError:
                self._tensor_steps = False
        if self._tensor_steps:
            return self.task.batch(0, torch.tensor(step, device=self.device))
        return self.task.batch(0, step)

    def step(self, step: int) -> None:
        """Step ``step`` of task 0 for every seed, one after another."""
        x, y = self._batch(step)
        for s, (model, opt) in enumerate(zip(self.models, self.optimizers)):
            out, features = model(x[s])
            loss = self.loss(s, out, y[s])
            with torch.no_grad():
                self.metric_sums[s] += self.task.step_metric(out.detach().unsqueeze(0), y[s:s + 1],
                                                             loss.detach().view(1)).double()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if self.gnts is not None:
                opt.zero_grad()
                self.gnts[s].gen_and_test(features)
        if self.task_name == "icifar100":
            self._icifar100_after_step(step)

    def _icifar100_after_step(self, step: int) -> None:
        """At an epoch end, per seed as the reference: validation in eval mode, keep the best
        ``state_dict``, then the learning-rate schedule. (Reads the task's batching helpers.)"""
        task, cfg = self.task, self.protocol.settings
        per_epoch = task.steps_per_epoch(0)
        if (step + 1) % per_epoch:
            return
        epoch = (step + 1) // per_epoch
        if cfg["early_stopping"]:
            batches = list(task._held_out(task.train_images, task.val_index, cfg["val_per_class"], None))
            for s, model in enumerate(self.models):
                model.eval()
                correct, total = 0, 0
                with torch.no_grad():
                    for x, label in batches:
                        out, _ = model(x[s])
                        correct += (out[:, self.columns[s]].argmax(1) == label[s]).sum()
                        total += label.shape[1]
                model.train()
                accuracy = float(correct / total)
                if self.best_accuracy[s] is None or accuracy > self.best_accuracy[s]:
                    self.best_accuracy[s] = accuracy
                    self.best_state[s] = copy.deepcopy(model.state_dict())
        if epoch < cfg["epochs"]:
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = task._lr(epoch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_seed_steps_per_second(method: str, task: str, protocol: str, n_seeds: int, *, steps: int, warmup: int,
                               device: torch.device, data_dir=None, verify: bool = True) -> float:
    """Seed-steps per second of the loop baseline: times ``steps`` steps (after ``warmup``) of
    ``n_seeds`` per-seed models inside task 0, as :func:`plastibench.bench.seed_steps_per_second`
    times the engine."""
    loop = LoopBaseline(method, task, protocol, n_seeds, device=device, data_dir=data_dir, verify=verify)
    if warmup + steps > loop.protocol.steps_per_task:
        raise ValueError(f"{task}/{protocol} has {loop.protocol.steps_per_task} steps per task; ask for fewer")
    device = torch.device(device)
    for step in range(warmup):
        loop.step(step)
    _sync(device)
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        loop.step(step)
    _sync(device)
    return steps * n_seeds / (time.perf_counter() - start)
