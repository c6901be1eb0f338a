"""Continual backprop (``methods/cbp.py``) against a plain restatement of the reference GnT.

The reference is Dohare et al.'s ``lop/algos/gnt.py`` (class ``GnT``: ``test_features``,
``update_utility``, ``gen_new_features``, ``update_optim_params``) and, for the "layer" count
rule, ``lop/algos/convGnT.py`` (``ConvGnT.test_features``). ``RefGnT`` below restates those rules
for ONE seed at a time, with Python loops over units and float64 arithmetic, and is driven in
lockstep with our seed-batched ``ContinualBackprop`` on a small 6-8-7-3 MLP: both see the same
features (the step's forward pass) and the same post-``optimizer.step()`` weights, exactly as in
``lop/algos/cbp.py::ContinualBackprop.learn`` (step, then ``gnt.gen_and_test``).

As in ``GnT.gen_and_test``, every layer is *tested* (ages, utilities, choice of units) on the
post-step weights before any layer is *generated* (re-initialised); then layers are generated in
order 0, 1, ..., so a unit replaced in layer l+1 gets a fresh incoming row even where layer l's
replacement had zeroed a column of the same matrix.

Where the reference leaves a choice open we check our documented one: ties in utility go to the
lowest unit index (``torch.topk`` promises no order); the Bernoulli coin is our counter-based draw
``rng.uniform(seeds, step, "cbp/<layer>/count", ())`` (the reference uses ``torch.rand(1)``).
"""

from __future__ import annotations

import math

import pytest
import torch

from plastibench import rng
from plastibench.method import RunContext, StepInfo
from plastibench.methods.cbp import ContinualBackprop
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.protocol import OptimizerSpec, Protocol

SIZES = (6, 8, 7, 3)
BATCH = 4
PROTOCOL = Protocol(task="test", name="cbp-reference", version=1, n_tasks=1, steps_per_task=100,
                    batch_size=BATCH, optimizer=OptimizerSpec("sgd", lr=0.01, momentum=0.9),
                    metric="mse", higher_is_better=False)
GAIN = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3.0}  # torch.nn.init.calculate_gain


# --------------------------------------------------------------------------------------------
# The reference, restated per seed (lop/algos/gnt.py, lop/algos/convGnT.py)
# --------------------------------------------------------------------------------------------

def reference_bound(init: str, activation: str, fan_in: int, n_units: int) -> float:
    """``GnT.compute_bounds``: the half-width of U(-b, b) for a hidden layer's new incoming weights.
    Note xavier uses the layer's own in_features + out_features (= its number of units)."""
    if init == "default":
        return math.sqrt(1 / fan_in)
    if init == "xavier":
        return GAIN[activation] * math.sqrt(6 / (fan_in + n_units))
    if init == "lecun":
        return math.sqrt(3 / fan_in)
    return GAIN[activation] * math.sqrt(3 / fan_in)  # kaiming


class RefGnT:
    """GnT's state and ``test_features`` for one network (one seed), plain lists and loops."""

    def __init__(self, hidden: tuple[int, ...], hp: dict):
        self.hp = hp
        self.layers = [{"age": [0] * n, "util": [0.0] * n, "mean": [0.0] * n, "pending": 0.0} for n in hidden]

    def test_features(self, weights: list[torch.Tensor], features: list[torch.Tensor],
                      draws: list[float]) -> list[dict]:
        """``GnT.test_features``: age, ``update_utility``, count and choice, per hidden layer.

        ``weights[l]`` is W_l ``[out, in]`` after the optimizer step and before any replacement of
        this step; ``features[l]`` is layer l's post-activation ``[B, n_l]``; ``draws[l]`` is the
        Bernoulli coin. Returns, per layer, the chosen units and the bias-corrected mean
        activations f_j as they were before the chosen units' state was reset.
        """
        hp = self.hp
        rate, eta, m = hp["replacement_rate"], hp["decay_rate"], hp["maturity_threshold"]
        results = []
        if rate == 0:  # GnT.test_features returns before ageing anything
            return [{"chosen": [], "f": [0.0] * len(st["age"])} for st in self.layers]
        for l, st in enumerate(self.layers):
            h = features[l].double()
            w_in, w_out = weights[l].double(), weights[l + 1].double()
            n = len(st["age"])
            f, util_hat = [0.0] * n, [0.0] * n
            for j in range(n):
                st["age"][j] += 1
                correction = 1 - eta ** st["age"][j]
                st["mean"][j] = eta * st["mean"][j] + (1 - eta) * h[:, j].mean().item()
                f[j] = st["mean"][j] / correction
                out_mag = w_out[:, j].abs().mean().item()
                if hp["utility"] == "contribution":
                    y = out_mag * h[:, j].abs().mean().item()
                else:  # zero_contribution, adaptable_contribution
                    y = out_mag * (h[:, j] - f[j]).abs().mean().item()
                    if hp["utility"] == "adaptable_contribution":
                        y /= w_in[j].abs().mean().item()
                st["util"][j] = eta * st["util"][j] + (1 - eta) * y
                util_hat[j] = st["util"][j] / correction
            eligible = [j for j in range(n) if st["age"][j] > m]
            k = 0
            if eligible:
                rule = hp["count_rule"]
                if rule == "bernoulli":  # GnT, accumulate=False
                    expected = rate * len(eligible)
                    k = (1 if draws[l] <= expected else 0) if expected < 1 else int(expected)
                else:  # GnT accumulate=True; ConvGnT adds rate * n_units once any unit is eligible
                    st["pending"] += rate * (len(eligible) if rule == "accumulate" else n)
                    k = int(st["pending"])
                    st["pending"] -= k
                assert k <= len(eligible), "reference torch.topk would fail here; pick gentler test parameters"
            chosen = sorted(eligible, key=lambda j: (util_hat[j], j))[:k]
            for j in chosen:  # util and mean activation reset in test_features, age in gen_new_features
                st["util"][j], st["mean"][j], st["age"][j] = 0.0, 0.0, 0
            results.append({"chosen": sorted(chosen), "f": f})
        return results


def reference_generate(weights, biases, results, *, next_bias_correction):
    """``GnT.gen_new_features`` for one seed, layers in order: what the parameters must become.

    Returns expected weights and biases (fresh rows hold NaN) and per-layer masks of fresh rows.
    """
    w = [t.double().clone() for t in weights]
    b = [t.double().clone() for t in biases]
    fresh = [torch.zeros(t.shape, dtype=torch.bool) for t in weights]
    for l, res in enumerate(results):
        for j in res["chosen"]:
            w[l][j, :] = math.nan
            fresh[l][j, :] = True
            b[l][j] = 0.0
            if next_bias_correction:  # the paper's correction (GnT's own line adds 0: mean was reset)
                b[l + 1] += w[l + 1][:, j] * res["f"][j]
            w[l + 1][:, j] = 0.0
            fresh[l + 1][:, j] = False
    return w, b, fresh


# --------------------------------------------------------------------------------------------
# Driving our implementation
# --------------------------------------------------------------------------------------------

class Run:
    """Our seed-batched net, optimizer and CBP, trained on random regression targets."""

    def __init__(self, seeds, *, activation="relu", momentum=0.9, lr=0.01, **overrides):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.hp = ContinualBackprop.hparams_for("test", overrides)
        self.net = BatchedMLP(MLPSpec(SIZES, activation), self.seeds)
        self.ctx = RunContext(seeds=self.seeds, task="test", protocol=PROTOCOL)
        self.cbp = ContinualBackprop(self.hp, self.ctx)
        self.net = self.cbp.configure_network(self.net)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=momentum)
        self.ctx.net, self.ctx.optimizer = self.net, self.opt
        self.refs = [RefGnT(SIZES[1:-1], self.hp) for _ in seeds]
        self.activation = activation

    def train_step(self, step: int) -> list[torch.Tensor]:
        x = rng.normal(self.seeds, step, "test/x", (BATCH, SIZES[0]))
        y = rng.normal(self.seeds, step, "test/y", (BATCH, SIZES[-1]))
        out, features = self.net(x)
        loss = ((out - y) ** 2).mean((1, 2)).sum()  # a sum of per-seed losses: seeds independent
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return [f.detach() for f in features]

    def params(self):
        return ([layer.weight.detach().clone() for layer in self.net.layers],
                [layer.bias.detach().clone() for layer in self.net.layers])

    def momenta(self):
        return ([self.opt.state[layer.weight]["momentum_buffer"].clone() for layer in self.net.layers],
                [self.opt.state[layer.bias]["momentum_buffer"].clone() for layer in self.net.layers])

    def replaced(self) -> list[list[list[int]]]:
        """Our replaced units this step, [seed][layer]: exactly the units whose age is now 0."""
        return [[torch.nonzero(st["age"][s] == 0).flatten().tolist() for st in self.cbp.state]
                for s in range(len(self.seeds))]

    def draws(self, step: int) -> list[list[float]]:
        per_layer = [rng.uniform(self.seeds, step, f"cbp/layer{l}/count", ()) for l in range(len(SIZES) - 2)]
        return [[float(d[s]) for d in per_layer] for s in range(len(self.seeds))]


def ref_step(run: Run, step: int, features, weights) -> list[list[dict]]:
    draws = run.draws(step)
    return [run.refs[s].test_features([w[s] for w in weights], [f[s] for f in features], draws[s])
            for s in range(len(run.seeds))]


def check_step(run: Run, step: int, results, before, after) -> None:
    """Everything the reference fixes about one generate-and-test step, for every seed and layer."""
    w0, b0 = before
    w1, b1 = after
    nbc = run.hp["next_bias_correction"]
    ours = run.replaced()
    for s, res in enumerate(results):
        where = f"step {step}, seed {s}"
        for l, r in enumerate(res):
            st, ref = run.cbp.state[l], run.refs[s].layers[l]
            assert ours[s][l] == r["chosen"], f"{where}, layer {l}: replaced {ours[s][l]}, reference {r['chosen']}"
            assert st["age"][s].tolist() == ref["age"], f"{where}, layer {l}: ages"
            torch.testing.assert_close(st["util"][s].double(), torch.tensor(ref["util"], dtype=torch.float64),
                                       rtol=1e-4, atol=1e-7, msg=lambda m: f"{where}, layer {l}, utility: {m}")
            torch.testing.assert_close(st["mean_act"][s].double(), torch.tensor(ref["mean"], dtype=torch.float64),
                                       rtol=1e-4, atol=1e-7, msg=lambda m: f"{where}, layer {l}, mean act: {m}")
            if run.hp["count_rule"] != "bernoulli":
                assert float(st["pending"][s]) == pytest.approx(ref["pending"], abs=1e-12), f"{where}: pending"
        exp_w, exp_b, fresh = reference_generate([w[s] for w in w0], [b[s] for b in b0], res,
                                                 next_bias_correction=nbc)
        for l in range(len(SIZES) - 1):
            got_w, got_b = w1[l][s], b1[l][s]
            keep = ~fresh[l]
            assert torch.equal(got_w[keep].double(), exp_w[l][keep]), f"{where}: W{l} outside fresh rows"
            if nbc:
                torch.testing.assert_close(got_b.double(), exp_b[l], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(got_b.double(), exp_b[l]), f"{where}: b{l}"
            if fresh[l].any():
                n_units = SIZES[l + 1]
                bound = reference_bound(run.hp["init"], run.activation, SIZES[l], n_units)
                new, old = got_w[fresh[l]], w0[l][s][fresh[l]]
                assert (new != old).all(), f"{where}: a replaced unit of layer {l} kept an incoming weight"
                assert new.abs().max() <= bound, f"{where}: new weights of layer {l} exceed U(±{bound:.4f})"


def drive(run: Run, n_steps: int, *, per_step=None) -> list[list[list[list[int]]]]:
    """Train ``n_steps``, checking every step against the reference. Returns [step][seed][layer] chosen."""
    log = []
    for step in range(n_steps):
        features = run.train_step(step)
        before = run.params()
        results = ref_step(run, step, features, before[0])
        run.cbp.after_step(StepInfo(step, 0, features))
        after = run.params()
        check_step(run, step, results, before, after)
        if per_step is not None:
            per_step(step, results, before, after)
        log.append([[r["chosen"] for r in res] for res in results])
    return log


def n_replaced(log) -> int:
    return sum(len(c) for step in log for seed in step for c in seed)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

CASES = {
    # utility, count rule, rate, maturity, decay, activation
    "contribution-accumulate": ("contribution", "accumulate", 0.1, 3, 0.9, "relu"),
    "contribution-bernoulli": ("contribution", "bernoulli", 0.3, 4, 0.99, "relu"),
    "contribution-layer": ("contribution", "layer", 0.05, 3, 0.9, "relu"),
    "zero_contribution-accumulate": ("zero_contribution", "accumulate", 0.1, 3, 0.99, "tanh"),
    "zero_contribution-bernoulli": ("zero_contribution", "bernoulli", 0.3, 3, 0.9, "relu"),
    "zero_contribution-layer": ("zero_contribution", "layer", 0.05, 5, 0.9, "tanh"),
    "adaptable_contribution-accumulate": ("adaptable_contribution", "accumulate", 0.1, 3, 0.9, "relu"),
    "adaptable_contribution-bernoulli": ("adaptable_contribution", "bernoulli", 0.3, 3, 0.99, "tanh"),
    "adaptable_contribution-layer": ("adaptable_contribution", "layer", 0.05, 4, 0.9, "relu"),
}


@pytest.mark.parametrize("case", CASES)
def test_generate_and_test_matches_reference(case):
    """GnT.test_features/update_utility/gen_new_features (lop/algos/gnt.py; "layer": ConvGnT):
    per step and seed, the exact replaced set and count, ages, utilities, mean activations, the
    accumulated count, fresh in-bound incoming rows, zero bias, zero outgoing columns, and every
    other parameter untouched."""
    utility, rule, rate, m, eta, act = CASES[case]
    run = Run([0, 1, 2], activation=act, replacement_rate=rate, maturity_threshold=m, decay_rate=eta,
              utility=utility, count_rule=rule)
    log = drive(run, 40)
    assert n_replaced(log) >= 10, "too few replacements for a meaningful test"
    if rule == "bernoulli":  # both branches of the count: a coin (rate*|E| < 1) and the floor (>= 1)
        counts = {len(c) for step in log for seed in step for c in seed}
        assert {0, 1, 2} <= counts, counts


@pytest.mark.parametrize("init", ["kaiming", "default", "lecun", "xavier"])
def test_new_weights_follow_reference_init_bound(init):
    """GnT.compute_bounds and gen_new_features (lop/algos/gnt.py): new incoming weights are
    U(-b, b) with b by ``init``; all lie within b and the largest come close to b."""
    run = Run([0, 1, 2], replacement_rate=0.3, maturity_threshold=1, count_rule="bernoulli", init=init)
    ratios = {0: [], 1: []}

    def collect(step, results, before, after):
        for s, res in enumerate(results):
            for l, r in enumerate(res):
                bound = reference_bound(init, "relu", SIZES[l], SIZES[l + 1])
                ratios[l] += (after[0][l][s][r["chosen"]].abs() / bound).flatten().tolist()

    drive(run, 30, per_step=collect)
    for l, values in ratios.items():
        assert len(values) >= 60
        assert max(values) <= 1.0, f"layer {l}: a new weight exceeds the reference bound ({max(values):.3f} b)"
        assert max(values) > 0.9, f"layer {l}: new weights use a narrower range than the reference bound"


def make_dead(run: Run, dead: dict[int, list[int]]) -> None:
    """Units ``dead[l]`` are zero on every input (a huge negative bias; they get no gradient, so stay
    dead); the other units get a positive bias so that none of them is silent by chance."""
    with torch.no_grad():
        for l, units in dead.items():
            run.net.layers[l].bias.fill_(2.0 + 4.0 * l)
            run.net.layers[l].bias[:, units] = -1e4


def test_ties_break_toward_lowest_index():
    """GnT.test_features picks the k eligible units of smallest bias-corrected utility with
    torch.topk, which fixes no order among equals; we require the lowest unit indices. Dead ReLU
    units have utility exactly 0: with dead {1, 4, 6} of 8 and k = 2 the choice must be {1, 4};
    with dead {2, 5} of 7 and k = 1 it must be {2}."""
    run = Run([0, 1, 2], replacement_rate=0.25, maturity_threshold=3, decay_rate=0.9, lr=1e-3,
              utility="contribution", count_rule="accumulate")
    make_dead(run, {0: [1, 4, 6], 1: [2, 5]})
    log = drive(run, 4)  # all units become eligible together at the 4th step
    for s in range(3):
        for l, dead in ((0, {1, 4, 6}), (1, {2, 5})):
            util = run.refs[s].layers[l]["util"]
            assert all((u == 0) == (j in dead) for j, u in enumerate(util) if j not in log[3][s][l]), util
        assert log[3][s] == [[1, 4], [2]], log[3][s]
        assert log[:3] == [[[[], []]] * 3] * 3


def test_replacing_dead_units_leaves_outputs_unchanged():
    """gen_new_features (lop/algos/gnt.py) zeroes a new unit's outgoing weights, so it cannot
    change the output; when the replaced unit was itself silent, the network function is exactly
    the same before and after the replacement (next_bias_correction off, the reference)."""
    run = Run([0, 1, 2], replacement_rate=0.25, maturity_threshold=3, decay_rate=0.9, lr=1e-3,
              utility="contribution", count_rule="accumulate")
    make_dead(run, {0: [1, 4, 6], 1: [2, 5]})
    probe = rng.normal(run.seeds, 10_000, "test/probe", (16, SIZES[0]))
    for step in range(4):
        features = run.train_step(step)
        before = run.net(probe)[0].detach()
        run.cbp.after_step(StepInfo(step, 0, features))
        assert torch.equal(run.net(probe)[0].detach(), before)
    assert run.replaced() == [[[1, 4], [2]]] * 3  # the replacement really happened


def forward_plain(weights, biases, x, act):
    """The MLP for one seed, written out (no batching)."""
    for w, b in zip(weights[:-1], biases[:-1]):
        x = act(x @ w.T + b)
    return x @ weights[-1].T + biases[-1]


def test_new_units_do_not_affect_outputs():
    """gen_new_features (lop/algos/gnt.py): new units start with zero outgoing weights, so right
    after a replacement the output equals that of the old network with the replaced units removed
    (their outgoing columns zeroed), whatever the new incoming weights are. (It is not, in general,
    the output before the replacement: the removed units' contributions are gone.)"""
    run = Run([0, 1, 2], replacement_rate=0.3, maturity_threshold=3, decay_rate=0.9,
              utility="adaptable_contribution", count_rule="bernoulli")
    probe = rng.normal(run.seeds, 10_000, "test/probe", (16, SIZES[0]))
    changed = 0
    for step in range(25):
        features = run.train_step(step)
        w0, b0 = run.params()
        out_before = run.net(probe)[0].detach()
        run.cbp.after_step(StepInfo(step, 0, features))
        out_after = run.net(probe)[0].detach()
        for s, chosen in enumerate(run.replaced()):
            ablated = [w[s].clone() for w in w0]
            for l, units in enumerate(chosen):
                ablated[l + 1][:, units] = 0.0
            expected = forward_plain(ablated, [b[s] for b in b0], probe[s], torch.relu)
            torch.testing.assert_close(out_after[s], expected, rtol=1e-5, atol=1e-5)
            changed += int(not torch.allclose(out_after[s], out_before[s]))
    assert changed > 0


def test_next_bias_correction():
    """The paper's bias correction (Dohare et al. 2024, Methods; the line in GnT.gen_new_features
    that adds W_out[:, j]·mean_j/(1−η^age_j)): with next_bias_correction the next layer's bias gains
    W_out[:, j]·f_j, f_j the bias-corrected mean activation before the reset. Without it (default,
    as GnT actually runs: the mean was already zeroed) the bias is unchanged (checked exactly)."""
    moved = []

    def record(step, results, before, after):  # how far biases are from the uncorrected reference
        for s, res in enumerate(results):
            _, plain, _ = reference_generate([w[s] for w in before[0]], [b[s] for b in before[1]], res,
                                             next_bias_correction=False)
            moved.append(max((after[1][l][s].double() - plain[l]).abs().max().item() for l in (1, 2)))

    for nbc in (True, False):
        moved.clear()
        run = Run([0, 1, 2], replacement_rate=0.1, maturity_threshold=3, decay_rate=0.9,
                  utility="zero_contribution", count_rule="accumulate", next_bias_correction=nbc)
        log = drive(run, 30, per_step=record)
        assert n_replaced(log) >= 10
        if nbc:
            assert max(moved) > 1e-3  # the correction did move biases
        else:
            assert max(moved) == 0.0


@pytest.mark.parametrize("reset", [True, False])
def test_reset_optimizer_state(reset):
    """GnT.update_optim_params resets the replaced units' optimizer state (incoming rows, their
    biases, outgoing columns) only for AdamGnT; with SGD it touches nothing. Our
    reset_optimizer_state=True zeroes SGD momentum exactly there; False leaves momentum untouched."""
    run = Run([0, 1, 2], replacement_rate=0.3, maturity_threshold=3, decay_rate=0.9, momentum=0.9,
              utility="contribution", count_rule="bernoulli", reset_optimizer_state=reset)
    total = 0
    for step in range(30):
        features = run.train_step(step)
        mw, mb = run.momenta()
        run.cbp.after_step(StepInfo(step, 0, features))
        gw, gb = run.momenta()
        for s, chosen in enumerate(run.replaced()):
            ew, eb = [w[s].clone() for w in mw], [b[s].clone() for b in mb]
            if reset:
                for l, units in enumerate(chosen):
                    ew[l][units, :] = 0.0
                    eb[l][units] = 0.0
                    ew[l + 1][:, units] = 0.0
            for l in range(len(SIZES) - 1):
                assert torch.equal(gw[l][s], ew[l]) and torch.equal(gb[l][s], eb[l]), f"step {step}, seed {s}"
            total += sum(len(units) for units in chosen)
    assert total >= 10


def test_immature_units_are_never_replaced():
    """GnT.test_features: only units with age > maturity_threshold are eligible. With rate 1 every
    eligible unit goes at once, so with m = 3 all units are replaced at steps 3, 7, 11, ... and
    nothing at all changes at the other steps."""
    run = Run([0, 1, 2], replacement_rate=1.0, maturity_threshold=3, decay_rate=0.9,
              utility="contribution", count_rule="accumulate")
    log = drive(run, 13)
    everything = [list(range(n)) for n in SIZES[1:-1]]
    for step, chosen in enumerate(log):
        assert chosen == [everything if step % 4 == 3 else [[], []]] * 3, step


def test_zero_rate_does_nothing():
    """GnT.test_features returns at once when replacement_rate == 0: no ageing, no utility, no
    change to the network."""
    run = Run([0, 1, 2], replacement_rate=0.0, maturity_threshold=0)
    for step in range(5):
        features = run.train_step(step)
        before = run.params()
        run.cbp.after_step(StepInfo(step, 0, features))
        after = run.params()
        assert all(torch.equal(a, b) for x, y in zip(before, after) for a, b in zip(x, y))
    for st in run.cbp.state:
        for name in ("age", "util", "mean_act", "pending"):
            assert not st[name].any(), name


def test_bernoulli_count_frequency():
    """GnT.test_features with accumulate=False: when rate·|E| < 1 one unit is replaced with
    probability rate·|E|. Over 400 seeds at one step the frequency must match (±~3.5 sd)."""
    seeds = list(range(400))
    rate = 0.3 / 8
    run = Run(seeds, replacement_rate=rate, maturity_threshold=0, count_rule="bernoulli")
    run.cbp.after_step(StepInfo(0, 0, run.train_step(0)))
    for l, n in enumerate(SIZES[1:-1]):
        freq = sum(len(chosen[l]) for chosen in run.replaced()) / len(seeds)
        p = rate * n
        assert abs(freq - p) < 3.5 * math.sqrt(p * (1 - p) / len(seeds)), (l, freq, p)


def test_seed_independence():
    """Seeds are independent networks (the reference runs one seed per process): seed 2 run beside
    seeds 0 and 1 makes the same CBP decisions and ends with the same weights and state as alone."""
    hp = dict(replacement_rate=0.1, maturity_threshold=3, decay_rate=0.9,  # rate·|E| < 1: a coin per step
              utility="zero_contribution", count_rule="bernoulli")
    batched, alone = Run([0, 1, 2], **hp), Run([2], **hp)
    log_b, log_a = drive(batched, 30), drive(alone, 30)
    assert [step[2] for step in log_b] == [step[0] for step in log_a]
    assert n_replaced(log_a) >= 5
    for pb, pa in zip(batched.net.parameters(), alone.net.parameters()):
        torch.testing.assert_close(pb[2:], pa, rtol=1e-5, atol=1e-6)
    for sb, sa in zip(batched.cbp.state, alone.cbp.state):
        for name in ("age", "util", "mean_act"):
            torch.testing.assert_close(sb[name][2:], sa[name], rtol=1e-5, atol=1e-7)
