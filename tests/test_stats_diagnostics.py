"""Seed statistics and plasticity diagnostics against direct restatements of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from plastibench import diagnostics
from plastibench.nn import BatchedMLP, MLPSpec
from plastibench.stats import mean_ci95

# --------------------------------------------------------------------------------------------
# mean and Student-t 95% CI
# --------------------------------------------------------------------------------------------

SAMPLES = [
    [1.0, 2.0, 3.0],
    [0.5, 0.25],
    [10.0, -3.0, 4.5, 7.25, 0.0],
    list(np.random.default_rng(0).normal(1.0, 0.3, 10)),
    list(np.random.default_rng(1).exponential(2.0, 30)),
    [1e-3, 2e-3, 1.5e-3, 1.1e-3],
]


@pytest.mark.parametrize("x", SAMPLES, ids=lambda x: f"n{len(x)}")
def test_mean_ci95_matches_scipy_t_interval(x):
    x = np.asarray(x)
    mean, low, high = mean_ci95(x)
    ref_low, ref_high = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert low == pytest.approx(ref_low, rel=1e-10, abs=1e-15)
    assert high == pytest.approx(ref_high, rel=1e-10, abs=1e-15)
    assert low < mean < high
    assert all(isinstance(v, float) for v in (mean, low, high))


def test_mean_ci95_accepts_lists_and_tuples():
    assert mean_ci95((1.0, 2.0, 3.0)) == mean_ci95([1.0, 2.0, 3.0]) == mean_ci95(np.array([1, 2, 3]))


def test_mean_ci95_one_value_has_no_interval():
    assert mean_ci95([0.7]) == (0.7, None, None)
    assert mean_ci95(np.array([2.0])) == (2.0, None, None)


def test_mean_ci95_constant_sample_has_zero_width():
    mean, low, high = mean_ci95([0.3, 0.3, 0.3])
    assert low == pytest.approx(mean) and high == pytest.approx(mean) and mean == pytest.approx(0.3)


# --------------------------------------------------------------------------------------------
# effective rank and stable rank: the reference's definitions (lop/utils/miscellaneous.py)
# --------------------------------------------------------------------------------------------

def ref_effective_rank(sv: np.ndarray) -> float:
    """``compute_effective_rank``: exp of the entropy of sv / sum|sv| (0 log 0 = 0).

    Restated with the reference's NaN semantics: all-zero sv gives p = 0/0 = NaN, ``q > 0`` is
    false on NaN, so the entropy is 0 and the rank 1."""
    sv = np.asarray(sv, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = sv / np.abs(sv).sum()
    entropy = -sum(q * math.log(q) for q in p if q > 0)
    return math.exp(entropy)


def ref_stable_rank(sv: np.ndarray, prop: float = 0.99) -> int:
    """``compute_abs_approximate_rank``: smallest k whose k largest sv hold ``prop`` of the sum (not squared).

    Restated with the reference's NaN semantics: all-zero sv gives NaN terms; the loop adds one
    (k = 1) and stops, since ``NaN < prop`` is false."""
    sv = np.asarray(sv, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = np.sort(sv / sv.sum())[::-1]
    total, k = 0.0, 0
    while total < prop:
        total += normed[k]
        k += 1
    return k


SV_CASES = {
    "one": [3.0],
    "equal4": [1.0, 1.0, 1.0, 1.0],
    "dominant": [100.0, 0.5, 0.25],
    "unsorted": [0.1, 5.0, 0.0, 2.0, 0.7],
    "with-zeros": [4.0, 0.0, 0.0],
    "decay": list(0.5 ** np.arange(12)),
    "random": list(np.random.default_rng(2).exponential(1.0, 32)),
    "all-zero": [0.0, 0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("name", sorted(SV_CASES))
def test_ranks_match_reference_definitions(name):
    sv = np.asarray(SV_CASES[name])
    t = torch.tensor(sv, dtype=torch.float32)
    assert diagnostics.effective_rank(t).item() == pytest.approx(ref_effective_rank(sv), rel=1e-5)
    assert diagnostics.stable_rank(t).item() == ref_stable_rank(sv)


def test_ranks_known_values():
    er, sr = diagnostics.effective_rank, diagnostics.stable_rank
    assert er(torch.ones(4)).item() == pytest.approx(4.0, rel=1e-6)
    assert sr(torch.ones(4)).item() == 4
    assert er(torch.tensor([2.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert sr(torch.tensor([2.0, 0.0, 0.0])).item() == 1
    # not squared: [90, 10] holds 90% in the first value, so k = 2 (squared would give 1)
    assert sr(torch.tensor([90.0, 10.0])).item() == 2
    assert sr(torch.tensor([0.5, 99.5])).item() == 1


def test_ranks_are_batched_over_leading_axes():
    cases = [SV_CASES[n] for n in ("equal4", "dominant", "with-zeros")]
    width = max(len(c) for c in cases)
    sv = torch.tensor([c + [0.0] * (width - len(c)) for c in cases])
    er, sr = diagnostics.effective_rank(sv), diagnostics.stable_rank(sv)
    assert er.shape == sr.shape == (3,)
    for i, c in enumerate(cases):
        assert er[i].item() == pytest.approx(ref_effective_rank(c), rel=1e-5)
        assert sr[i].item() == ref_stable_rank(c)


def matrix_ranks(h: np.ndarray) -> tuple[float, int]:
    sv = np.linalg.svd(h.astype(np.float64), compute_uv=False)
    return ref_effective_rank(sv), ref_stable_rank(sv)


def test_ranks_of_zero_and_rank_one_matrices():
    zero = torch.zeros(1, 16, 5)
    sv = torch.linalg.svdvals(zero)
    # the reference gives 1 for both (its comparisons run on NaN), not 0
    assert ref_effective_rank(sv[0].numpy()) == 1.0 and ref_stable_rank(sv[0].numpy()) == 1
    assert diagnostics.effective_rank(sv).item() == 1.0
    assert diagnostics.stable_rank(sv).item() == 1.0
    g = np.random.default_rng(3)
    rank1 = np.outer(g.uniform(0.5, 2, 16), g.uniform(0.5, 2, 5)).astype(np.float32)
    sv = torch.linalg.svdvals(torch.from_numpy(rank1)[None])
    assert diagnostics.stable_rank(sv).item() == 1
    assert diagnostics.effective_rank(sv).item() == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------------------------
# measure(): dead units, ranks and weight magnitude on a constructed network
# --------------------------------------------------------------------------------------------

def constructed_net() -> tuple[BatchedMLP, torch.Tensor]:
    """2 seeds of a 3-4-4-2 ReLU net; positive probe inputs; known dead units.

    Layer 0, seed 0: units 1 and 3 have negative weights and bias (dead on positive inputs);
    unit 2 is zero on part of the probe only (alive). Seed 1: unit 0 dead.
    Layer 1: seed 0 unit 0 dead; seed 1 all four dead (an all-zero representation).
    """
    net = BatchedMLP(MLPSpec((3, 4, 4, 2), "relu"), torch.tensor([0, 1]))
    with torch.no_grad():
        w0 = torch.tensor([
            [[1.0, 0.5, 0.2], [-1.0, -1.0, -1.0], [1.0, -1.0, 0.0], [-0.5, -0.2, -0.1]],
            [[-1.0, -2.0, -0.5], [0.3, 0.3, 0.3], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
        ])
        b0 = torch.tensor([[0.1, -0.1, 0.0, -0.2], [-0.1, 0.0, 0.0, 0.1]])
        net.layers[0].weight.copy_(w0)
        net.layers[0].bias.copy_(b0)
        w1 = torch.tensor([
            [[-1.0, -1.0, -1.0, -1.0], [1.0, 0.0, 0.5, 0.0], [0.2, 0.0, 1.0, 0.0], [0.7, 0.0, -0.3, 0.0]],
            [[-1.0] * 4] * 4,
        ])
        net.layers[1].weight.copy_(w1)
        net.layers[1].bias.copy_(torch.tensor([[0.0, 0.1, 0.0, 0.05], [-0.5] * 4]))
        net.layers[2].weight.copy_(torch.full((2, 2, 4), 0.25))
    probe = torch.from_numpy(np.random.default_rng(4).uniform(0.0, 1.0, (2, 20, 3)).astype(np.float32))
    return net, probe


def test_measure_counts_dead_units_exactly():
    net, probe = constructed_net()
    _, features = net(probe)
    h0 = features[0]
    assert (h0[0, :, 2] == 0).any() and (h0[0, :, 2] > 0).any()  # partly zero: alive
    out = diagnostics.measure(net, probe)
    np.testing.assert_array_equal(out["dead_fraction/layer0"].numpy(), [0.5, 0.25])
    np.testing.assert_array_equal(out["dead_fraction/layer1"].numpy(), [0.25, 1.0])
    for name, value in out.items():
        assert value.shape == (2,), name


def test_measure_ranks_and_weight_magnitude_match_restatement():
    net, probe = constructed_net()
    out = diagnostics.measure(net, probe)
    _, features = net(probe)
    for layer, h in enumerate(features):
        for s in range(2):
            er, sr = matrix_ranks(h[s].detach().numpy())
            assert out[f"effective_rank/layer{layer}"][s].item() == pytest.approx(er, rel=1e-4, abs=1e-6)
            assert out[f"stable_rank/layer{layer}"][s].item() == sr
    # seed 1's second hidden layer is all zero: both ranks are 1, as the reference's
    assert out["effective_rank/layer1"][1].item() == 1.0 and out["stable_rank/layer1"][1].item() == 1.0
    for s in range(2):
        weights = [layer.weight[s].detach().numpy() for layer in net.layers]
        expected = sum(np.abs(w).sum() for w in weights) / sum(w.size for w in weights)
        assert out["weight_magnitude"][s].item() == pytest.approx(expected, rel=1e-6)


def test_measure_does_not_change_the_network_or_track_gradients():
    net, probe = constructed_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = diagnostics.measure(net, probe)
    assert all(not v.requires_grad for v in out.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
