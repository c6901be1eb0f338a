"""Comparison statistics against scipy and hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from plastibench.stats import compare_seeds, holm, iqm, iqm_ci95, paired_t, prob_improvement, welch_t

G = np.random.default_rng(7)
PAIRS = [
    ([1.0, 2.0, 3.0, 4.5], [0.5, 2.5, 2.0]),
    (list(G.normal(1.0, 0.3, 10)), list(G.normal(1.2, 0.8, 12))),
    (list(G.exponential(2.0, 30)), list(G.exponential(1.0, 30))),
]


@pytest.mark.parametrize("x, y", PAIRS, ids=lambda v: f"n{len(v)}")
def test_welch_matches_scipy(x, y):
    ref = scipy.stats.ttest_ind(x, y, equal_var=False)
    ci = ref.confidence_interval(0.95)
    d = welch_t(x, y)
    assert d.test == "welch"
    assert d.difference == pytest.approx(np.mean(x) - np.mean(y), rel=1e-12)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert d.ci95 == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert d.ci95[0] < d.difference < d.ci95[1]


@pytest.mark.parametrize("n", [3, 12])
def test_paired_matches_scipy(n):
    x = G.normal(0.0, 1.0, n)
    y = x + G.normal(0.2, 0.1, n)
    ref = scipy.stats.ttest_rel(x, y)
    ci = ref.confidence_interval(0.95)
    d = paired_t(x, y)
    assert d.test == "paired"
    assert d.difference == pytest.approx(np.mean(x - y), rel=1e-12)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert d.ci95 == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_paired_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2*sqrt(3) on 2 df
    d = paired_t([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = scipy.stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert d.ci95 == pytest.approx((2 - half, 2 + half))
    assert d.p_value == pytest.approx(2 * scipy.stats.t.sf(2 * np.sqrt(3), 2))


def test_compare_seeds_pairs_by_seed_when_the_seeds_agree():
    x = {0: 1.0, 1: 2.0, 2: 4.0, 3: 3.5}
    y = {3: 3.0, 1: 1.9, 0: 0.7, 2: 3.2}  # same seeds, other order
    d = compare_seeds(x, y)
    assert d.test == "paired"
    assert d == paired_t([1.0, 2.0, 4.0, 3.5], [0.7, 1.9, 3.2, 3.0])


def test_compare_seeds_uses_welch_when_the_seeds_differ():
    x = {0: 1.0, 1: 2.0, 2: 4.0, 3: 3.5}
    y = {0: 0.7, 1: 1.9, 2: 3.2, 4: 3.0}
    d = compare_seeds(x, y)
    assert d.test == "welch"
    assert d == welch_t(list(x.values()), list(y.values()))
    assert compare_seeds(x, {0: 1.0, 1: 2.0}).test == "welch"


def test_degenerate_comparisons():
    same = paired_t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.difference, same.ci95, same.p_value) == (0.0, (0.0, 0.0), 1.0)
    shifted = paired_t([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (shifted.difference, shifted.ci95, shifted.p_value) == (0.5, (0.5, 0.5), 0.0)
    constant = welch_t([2.0, 2.0], [1.0, 1.0, 1.0])
    assert (constant.difference, constant.p_value) == (1.0, 0.0)
    assert welch_t([1.0], [1.0, 2.0]) is None
    assert paired_t([1.0], [2.0]) is None
    with pytest.raises(ValueError):
        paired_t([1.0, 2.0], [1.0, 2.0, 3.0])


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5*2 = 1.0, then max(1.0, 0.6)
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm([0.01, 0.01, 0.2]) == pytest.approx([0.03, 0.03, 0.2])


def brute_force_improvement(x, y, higher_is_better):
    wins = sum(1.0 if (a > b if higher_is_better else a < b) else 0.5 if a == b else 0.0
               for a, b in itertools.product(x, y))
    return wins / (len(x) * len(y))


def test_probability_of_improvement_by_hand_with_ties():
    x, y = [1.0, 2.0, 3.0], [2.0, 2.0, 0.0]
    # higher is better: 1 beats 0 (1); 2 ties 2, 2 and beats 0 (2); 3 beats all (3): 6/9
    assert prob_improvement(x, y) == pytest.approx(6 / 9)
    # lower is better: 1 beats 2, 2 (2); 2 ties twice (1); 3 beats none: 3/9
    assert prob_improvement(x, y, higher_is_better=False) == pytest.approx(3 / 9)
    assert prob_improvement(y, x) == pytest.approx(3 / 9)
    assert prob_improvement([1.0, 1.0], [1.0]) == 0.5


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_probability_of_improvement_matches_counting(higher_is_better):
    x, y = G.integers(0, 5, 9).astype(float), G.integers(0, 5, 13).astype(float)  # many ties
    assert prob_improvement(x, y, higher_is_better) == pytest.approx(brute_force_improvement(x, y, higher_is_better))
    assert prob_improvement(x, y, higher_is_better) + prob_improvement(y, x, higher_is_better) == pytest.approx(1.0)


def test_iqm_is_the_25_percent_trimmed_mean():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 100, 2, 7, 3, 6, -50]) == pytest.approx(4.5)
    x = G.normal(size=17)
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def test_iqm_bootstrap_only_above_ten_seeds():
    assert iqm_ci95([list(range(10))]) is None
    assert iqm_ci95([list(range(11)), list(range(10))]) is None
    ci = iqm_ci95([list(G.normal(size=11))])
    assert ci is not None and ci[0] < ci[1]


def test_iqm_bootstrap_is_seeded_and_brackets_the_iqm():
    x = list(G.normal(0.0, 1.0, 20))
    ci = iqm_ci95([x], reps=2000, seed=3)
    assert ci == iqm_ci95([x], reps=2000, seed=3)
    assert ci != iqm_ci95([x], reps=2000, seed=4)
    assert ci[0] < iqm(x) < ci[1]


def test_iqm_bootstrap_resamples_within_strata():
    # Each resample keeps 11 zeros and 11 ones: the IQM of every resample is 0.5 exactly.
    # Resampling the pooled 22 values instead would move it.
    assert iqm_ci95([[0.0] * 11, [1.0] * 11], reps=500) == (0.5, 0.5)
