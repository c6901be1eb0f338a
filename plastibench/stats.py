"""Statistics over seeds. The primary interval is Student's t 95% CI of the mean.

Comparisons of two methods use Student-t tests on per-seed scores: the paired test when both
methods ran exactly the same seeds, Welch's test otherwise; families of comparisons are
Holm-adjusted. Secondary, literature-compatible views: the probability of improvement
(Mann-Whitney U / nm) and the interquartile mean with a stratified bootstrap CI (only above
10 seeds, see :func:`iqm_ci95`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_MIN_SEEDS = 11


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and Student-t 95% confidence interval (n − 1 degrees of freedom, ddof = 1 SEM).

    With one seed, or a non-finite value (a diverged seed scored as inf), the interval is undefined
    and returned as ``(mean, None, None)``.
    """
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2 or not np.isfinite(x).all():  # one seed, or a diverged seed scored as ±inf
        return mean, None, None
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Difference:
    """``mean(x) − mean(y)`` with its 95% CI and two-sided p-value; ``test`` is "paired" or "welch"."""

    test: str
    difference: float
    ci95: tuple[float, float]
    p_value: float


def _degenerate(test: str, diff: float) -> Difference:
    """Zero variance everywhere: the difference is known exactly (p = 1 if it is 0, else 0)."""
    return Difference(test, diff, (diff, diff), 1.0 if diff == 0 else 0.0)


def _from_scipy(test: str, diff: float, result) -> Difference:
    ci = result.confidence_interval(0.95)
    return Difference(test, diff, (float(ci.low), float(ci.high)), float(result.pvalue))


def welch_t(x: Sequence[float], y: Sequence[float]) -> Difference | None:
    """Welch's unequal-variance t-test of ``x`` against ``y``; None below two values per side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return None
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return _degenerate("welch", diff)
    with warnings.catch_warnings():  # "catastrophic cancellation" on nearly equal samples
        warnings.simplefilter("ignore", RuntimeWarning)
        return _from_scipy("welch", diff, stats.ttest_ind(a, b, equal_var=False))


def paired_t(x: Sequence[float], y: Sequence[float]) -> Difference | None:
    """Paired t-test of ``x[i]`` against ``y[i]``; None below two pairs."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size != b.size:
        raise ValueError(f"paired test needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2:
        return None
    d = a - b
    diff = float(a.mean() - b.mean())
    if np.ptp(d) == 0:
        return _degenerate("paired", diff)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _from_scipy("paired", diff, stats.ttest_rel(a, b))


def compare_seeds(x: Mapping[int, float], y: Mapping[int, float]) -> Difference | None:
    """``x`` against ``y`` (per-seed scores keyed by seed): paired t if the seeds agree, else Welch.

    Pairing is valid because in plastibench seed s defines the same task stream and the same initial
    network for every method: all randomness comes from a counter-based RNG keyed by (seed, step,
    purpose), so two methods run on seed s differ only by what the method does.
    """
    if set(x) == set(y):
        seeds = sorted(x)
        return paired_t([x[s] for s in seeds], [y[s] for s in seeds])
    return welch_t(list(x.values()), list(y.values()))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (p.size - np.arange(p.size))  # smallest p times m, next times m − 1, ...
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def prob_improvement(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> float:
    """P(a seed of X is better than a seed of Y) = Mann-Whitney U / (n·m); ties count ½."""
    sign = 1.0 if higher_is_better else -1.0
    a, b = sign * np.asarray(x, dtype=np.float64), sign * np.asarray(y, dtype=np.float64)
    return float(stats.mannwhitneyu(a, b, alternative="greater").statistic / (a.size * b.size))


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean`` cutting 25% each side)."""
    return float(stats.trim_mean(np.asarray(values, dtype=np.float64), 0.25, axis=None))


def iqm_ci95(strata: Sequence[Sequence[float]], reps: int = 10000, seed: int = 0) -> tuple[float, float] | None:
    """Stratified percentile-bootstrap 95% CI of the IQM (runs resampled within each task stratum).

    Returned only when every stratum has more than 10 seeds, else None. At few seeds the bootstrap
    is optimistic (the project's notes data-stats-conventions.md §2.3, 1000 simulations): the
    stratified IQM interval covered 0.861 at 5 seeds and 0.920 at 10 seeds instead of 0.95, and a
    percentile-CI test rejected a true null 11.8% (5 seeds) and 8.4% (10 seeds) of the time instead
    of 5%, while the Student-t interval stayed at 0.95. Resampling uses a seeded numpy Generator,
    so the interval is reproducible.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in strata]
    if not arrays or min(a.size for a in arrays) < BOOTSTRAP_MIN_SEEDS:
        return None
    rng = np.random.default_rng(seed)
    samples = np.concatenate([a[rng.integers(0, a.size, (reps, a.size))] for a in arrays], axis=1)
    boot = stats.trim_mean(samples, 0.25, axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)
