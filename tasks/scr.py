"""Slowly-changing regression (``scr``), the Nature paper's "bit-flipping" problem.

Restated from ``lop/slowly_changing_regression/`` of ``shibhansh/loss-of-plasticity``.
Inputs are m = 20 bits: the first f = 15 "slow" bits are held for T = 10 000 examples, the other 5
are fresh fair coins every example. The target is a fixed random LTU network (``FixLTUNet``) with
100 hidden linear-threshold units: every weight and bias is ±1 with equal probability; unit i fires
(outputs 1, else 0) when its pre-activation exceeds τ_i = β(m+1) − S_i with β = 0.7 and
S_i = (m − Σ_j w_ij + b_i)/2; the output is the ±1-weighted sum of the units plus a ±1 bias.
The learner is a 20-5-1 ReLU net (Kaiming-uniform init, biases 0), trained online (batch 1) by
SGD with step size 0.01 on the squared error; the metric is the squared error of the prediction
made *before* each update, averaged over each change period (a "task" here is one period of T
examples).

Two data variants, as in the reference:

* ``redraw`` (``cfg/prob.json``, used by every ``cfg/sgd/*`` and ``cfg/adam/*`` run): every T
  examples all 15 slow bits are redrawn at random;
* ``flip-one`` (``cfg/flip_one_prob.json``, the paper's Extended Data caption): every T examples
  one random slow bit is flipped.

Protocols: ``paper`` is the reference's 1 000 000 examples (100 periods, redraw); ``flip-one``
is the flip-one configs' 3 000 000 examples; ``short`` keeps every setting and stops at 300 000
examples (30 periods), long enough for the decline to be clear over 10 seeds
(measured, docs/benchmarks.md: backprop's error rises from 0.69 to 0.9-1.0 per 50k examples while
three quarters of its units die; CBP stays at 0.5-0.6), about 1 min (bp) to 3 min (cbp) on a
2-core CPU; ``smoke`` is a few hundred steps for tests.

Seed-for-seed reproduction of the reference (``--set task.rng=reference``, hashed into the protocol).
The reference scripts never seed (its runs are not reproducible); this option draws run s as the
reference code does after ``torch.manual_seed``, on PyTorch's CPU generator:

* the data as ``slowly_changing_regression.py`` after ``torch.manual_seed(1000 + s)``: ``FixLTUNet``'s
  two ``nn.Linear`` layers are built (their default inits consume draws and are overwritten), then
  the ±1 target weights (``randint`` of w1 [100, 20], b1, w2 [1, 100], b2 in that order), then the slow
  bits of all ``int(1e7 / T) + 1`` periods the reference generates (``cfg/prob.json``: 1e7 examples;
  flip-one: one ``randint(15)`` per period after the first), then the fast bits, row after row of one
  ``randint(2, (N, 5))`` draw; a period's rows are drawn when it starts (CPU draws are sequential, so
  drawing the rows in blocks gives the same values);
* the learner as ``expr.py``'s ``FFNN(20, 5)`` after ``torch.manual_seed(s)``: both ``nn.Linear``
  layers built (default inits drawn), then biases zeroed, hidden weights Kaiming-uniform with the
  activation's gain (ReLU's for swish and elu), output weights Kaiming-uniform with linear gain.

Only the first draws differ from ``rng=plastibench``; the engine, loss and SGD are the same. Run
beside the reference code itself (seeded as above, on the same CPU), bp on ``paper`` gives the
reference's per-period errors to within 6e-7 relative over all 100 periods of runs 0, 2 and 4 (last
100k examples: 0.96086, 1.37212 and 2.04345 both ways; docs/benchmarks.md).
``tests/test_scr_reference.py`` checks the data and the first period of runs 0-4 against numbers the
reference code printed. Methods that draw during training (CBP's replacements, S&P's noise) still
draw from plastibench's keyed generator.

``task.transition=linear:N`` (issue 13): in-task step t < N of period k ≥ 1 keeps period k's fast bits
and, per sample, takes period k's slow bits with probability t/N, else period k − 1's
(``Task.from_new``); the target is the same fixed LTU net of the input shown. From step N on (and
with the default ``abrupt``, whose streams and hashes are unchanged) every sample is period k's.

Diagnostics probe (plastibench's choice, issue 11): ``probe_size`` inputs whose 20 bits are *all*
fresh fair coins, slow bits included, drawn from the rng keyed by (seed, period) with purposes of
their own (``probe`` for the fast bits, ``probe/slow`` for the slow ones), so the probe is a pure
function of (seed, task). With 2^20 possible inputs the 1000 probe inputs are (nearly) all
distinct, and a unit is "dead" when it is silent over the whole input space, as MNIST's 2000
distinct images probe it; the period's own slow bits would leave only 2^5 = 32 distinct inputs
and make "dead" mean "silent for this period". (Before issue 11 the probe held the period's slow
bits: the diagnostics numbers of runs made then differ; the metric does not.)
"""

from __future__ import annotations

import torch

from plastibench import rng
from plastibench.nn import BatchedLinear
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.registry import register_task
from plastibench.task import BOUNDARIES, TRANSITION, Task

_SETTINGS = {"n_inputs": 20, "n_slow_bits": 15, "target_features": 100, "beta": 0.7, "hidden": 5,
             "activation": "relu", "variant": "redraw"}
_SGD = OptimizerSpec(name="sgd", lr=0.01)
REFERENCE_EXAMPLES = 10_000_000  # num_data_points of the reference's cfg/prob.json and flip_one_prob.json
REFERENCE_GAIN = {"swish": "relu", "elu": "relu"}  # FFNN's Kaiming gain for activations torch has none for


def reference_target(seed: int, m: int, h: int) -> tuple[torch.Tensor, ...]:
    """``FixLTUNet(m, h)``'s ±1 weights w1, b1, w2, b2 as drawn after ``torch.manual_seed(seed)``; the
    global generator is left just after them (the caller forks it)."""
    torch.manual_seed(seed)
    torch.nn.Linear(m, h), torch.nn.Linear(h, 1)  # their default inits take draws before the ±1 weights
    return tuple(torch.randint(0, 2, shape, dtype=torch.float) * 2 - 1 for shape in ((h, m), (h,), (1, h), (1,)))


def reference_slow_bits(n_periods: int, f: int, flip_one: bool) -> torch.Tensor:
    """The reference's slow bits of every period ``[n_periods, f]``, drawn from the global generator."""
    bits = torch.randint(2, size=(n_periods, f), dtype=torch.float32)
    if flip_one:
        for i in range(1, n_periods):
            bits[i] = bits[i - 1]
            k = torch.randint(f, (1,))
            bits[i][k] = 1 - bits[i - 1][k]
    return bits


def reference_learner(seed: int, sizes: tuple[int, int, int], activation: str) -> tuple[torch.Tensor, ...]:
    """``FFNN``'s initial w1, b1, w2, b2 after ``torch.manual_seed(seed)`` (the global generator is forked)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first, last = torch.nn.Linear(sizes[0], sizes[1]), torch.nn.Linear(sizes[1], sizes[2])
        with torch.no_grad():
            torch.nn.init.kaiming_uniform_(first.weight, nonlinearity=REFERENCE_GAIN.get(activation, activation))
            torch.nn.init.kaiming_uniform_(last.weight, nonlinearity="linear")
        return first.weight.detach(), torch.zeros(sizes[1]), last.weight.detach(), torch.zeros(sizes[2])


class ReferenceStream:
    """Runs' data drawn as the reference generates them, one CPU generator per seed (host work at a
    period's start). ``fast(period)`` gives the period's fast bits ``[S, T, m - f]``."""

    def __init__(self, seeds: list[int], m: int, f: int, h: int, period: int, flip_one: bool):
        self.period, self.width = period, m - f
        n_periods = REFERENCE_EXAMPLES // period + 1
        targets, slow, self._start = [], [], []
        with torch.random.fork_rng(devices=[]):
            for s in seeds:
                targets.append(reference_target(1000 + s, m, h))
                slow.append(reference_slow_bits(n_periods, f, flip_one))
                self._start.append(torch.get_rng_state())
        self.target = [torch.stack(parts) for parts in zip(*targets)]
        self.slow = torch.stack(slow)  # [S, n_periods, f]
        self._generators = [torch.Generator() for _ in seeds]
        self._row = None  # the next row every generator draws

    def fast(self, period: int) -> torch.Tensor:
        first = period * self.period
        if self._row != first:  # a resume or a jump: draw again from the start of the fast bits
            for g, state in zip(self._generators, self._start):
                g.set_state(state)
                for done in range(0, first, 1 << 20):
                    torch.randint(2, size=(min(1 << 20, first - done), self.width), generator=g)
        self._row = first + self.period
        return torch.stack([torch.randint(2, size=(self.period, self.width), dtype=torch.float32, generator=g)
                            for g in self._generators])


def _protocol(name: str, n_tasks: int, steps: int, description: str, probe: int = 1000, seeds: int = 30,
              **settings) -> Protocol:
    return Protocol(task="scr", name=name, version=1, n_tasks=n_tasks, steps_per_task=steps, batch_size=1,
                    optimizer=_SGD, metric="squared_error", higher_is_better=False, probe_size=probe,
                    default_seeds=seeds, description=description, settings={**_SETTINGS, **settings})


@register_task("scr")
class SlowlyChangingRegression(Task):
    summary = "slowly-changing regression: 20-5-1 ReLU learner vs a drifting LTU target, online"
    plot_bin_tasks = 2  # bins of 20 000 examples, as lop/slowly_changing_regression/plots
    online = True
    options = {"rng": ("plastibench", "reference"), **BOUNDARIES, **TRANSITION}
    protocols = {
        "paper": _protocol("paper", 100, 10_000, "the reference's 1M examples, all slow bits redrawn; 100 seeds "
                           "by default, as the paper's 100 runs", seeds=100),
        "flip-one": _protocol("flip-one", 300, 10_000, "3M examples, one slow bit flipped per period",
                              variant="flip-one"),
        "short": _protocol("short", 30, 10_000, "300k examples: backprop's decline shows in minutes on CPU",
                           seeds=10),
        "smoke": _protocol("smoke", 4, 250, "seconds, for tests", probe=64, seeds=3),
    }

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        cfg = protocol.settings
        self.m, self.f = cfg["n_inputs"], cfg["n_slow_bits"]
        self.variant = cfg["variant"]
        if self.variant not in ("redraw", "flip-one"):
            raise ValueError(f"unknown scr variant {self.variant!r}")
        h = cfg["target_features"]
        self.reference = None
        if cfg.get("rng", "plastibench") == "reference":
            self.reference = ReferenceStream(seeds.tolist(), self.m, self.f, h, protocol.steps_per_task
                                             * protocol.batch_size, self.variant == "flip-one")
            self.w1, self.b1, self.w2, self.b2 = (t.to(self.device) for t in self.reference.target)
        else:
            sign = lambda purpose, shape: 2.0 * rng.bits(seeds, 0, purpose, shape) - 1.0  # noqa: E731
            self.w1, self.b1 = sign("target/w1", (h, self.m)), sign("target/b1", (h,))
            self.w2, self.b2 = sign("target/w2", (1, h)), sign("target/b2", (1,))
        s_count = (self.m - self.w1.sum(-1) + self.b1) / 2
        self.tau = cfg["beta"] * (self.m + 1) - s_count
        self._period = None
        self._rows = torch.arange(protocol.batch_size, device=self.device)

    def network(self, seeds=None):
        cfg = self.protocol.settings
        seeds = self.seeds if seeds is None else seeds
        net = BatchedMLP(MLPSpec((self.m, cfg["hidden"], 1), cfg["activation"]), seeds)
        if self.reference is not None:
            self._reference_init(net, seeds.tolist())
        return net

    def _reference_init(self, net: BatchedMLP, seeds: list[int]) -> None:
        """Overwrite ``net``'s parameters with ``FFNN``'s init of each seed (``task.rng=reference``)."""
        sizes = (self.m, self.protocol.settings["hidden"], 1)
        layers = [m for m in net.modules() if isinstance(m, BatchedLinear)]
        if [tuple(m.weight.shape[1:]) for m in layers] != [sizes[1::-1], sizes[:0:-1]]:
            raise ValueError(f"task.rng=reference draws the reference's FFNN{sizes}; this network's layers "
                             "differ (a method that reshapes the network cannot use it)")
        drawn = [reference_learner(s, sizes, self.protocol.settings["activation"]) for s in seeds]
        with torch.no_grad():
            for param, values in zip((layers[0].weight, layers[0].bias, layers[1].weight, layers[1].bias),
                                     zip(*drawn)):
                param.copy_(torch.stack(values))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The LTU target net's output ``[S, B, 1]`` for inputs ``x[S, B, m]``."""
        pre = torch.baddbmm(self.b1.unsqueeze(1), x, self.w1.transpose(1, 2))
        features = (pre > self.tau.unsqueeze(1)).float()
        return torch.baddbmm(self.b2.unsqueeze(1), features, self.w2.transpose(1, 2))

    def _slow_bits(self, period: int) -> torch.Tensor:
        """Slow bits of ``period`` ``[S, f]``; flip-one walks from period 0, redraw is direct."""
        if self.reference is not None:
            return self.reference.slow[:, period].to(self.device)
        if self.variant == "redraw":
            return rng.bits(self.seeds, period, "slow/redraw", (self.f,))
        bits = rng.bits(self.seeds, 0, "slow/0", (self.f,))
        for p in range(1, period + 1):
            which = rng.hash32(self.seeds, p, "slow/flip", ()) % self.f
            bits = torch.where(torch.arange(self.f, device=self.device) == which.unsqueeze(1), 1 - bits, bits)
        return bits

    def _inputs(self, period: int, n: int, purpose: str) -> torch.Tensor:
        """``n`` inputs ``[S, n, m]`` of ``period``: its slow bits, then fresh fast bits."""
        if self.reference is not None:
            fast = self.reference.fast(period).to(self.device)
        else:
            fast = rng.bits(self.seeds, period, purpose, (n, self.m - self.f))
        slow = self._slow_bits(period).unsqueeze(1).expand(-1, n, -1)
        return torch.cat([slow, fast], dim=-1)

    def start_task(self, task_index):
        if self._period != task_index:
            n = self.protocol.steps_per_task * self.protocol.batch_size
            self.x = self._inputs(task_index, n, "fast")
            self.y = self.target(self.x)
            self._period = task_index
            if self.transition_steps:
                self.previous = self._slow_bits(max(task_index - 1, 0)).unsqueeze(1)  # [S, 1, f]

    def batch(self, task_index, step):
        rows = step * self.protocol.batch_size + self._rows
        x = self.x.index_select(1, rows)
        if not self.transition_steps:
            return x, self.y.index_select(1, rows)
        old = torch.cat([self.previous.expand(-1, x.shape[1], -1), x[..., self.f:]], dim=-1)
        x = torch.where(self.from_new(step).unsqueeze(-1), x, old)
        return x, self.target(x)  # the fixed target of the mixed input: exact (sums of ±1 in float32)

    def loss(self, out, y):
        return ((out - y) ** 2).mean(dim=(1, 2))

    def probe(self, task_index):
        """Probe inputs ``[S, P, m]``: fresh slow and fast bits per input (see the module docstring)."""
        n = self.protocol.probe_size
        slow = rng.bits(self.seeds, task_index, "probe/slow", (n, self.f))
        fast = rng.bits(self.seeds, task_index, "probe", (n, self.m - self.f))
        return torch.cat([slow, fast], dim=-1)
