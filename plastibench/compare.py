"""The statistics table of several methods on one task and protocol, from raw per-seed values.

Shared by ``plastibench compare`` (run directories, a rich table) and ``plastibench leaderboard
render`` (entries, Markdown): both call :func:`statistics_table`, then :func:`header` and
:func:`cells` for the text of each column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .stats import Difference, compare_seeds, holm, mean_ci95, prob_improvement

MIN_RANKED_SEEDS = 10
ALPHA = 0.05
DASH = "—"


@dataclass(frozen=True)
class Result:
    """One method's raw values on one task/protocol: the primary metric and end-of-run diagnostics per seed."""

    label: str
    per_seed: Mapping[int, float]
    diagnostics: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    n_diverged: int = 0  # seeds that went non-finite (scored by the protocol's rule, never dropped)

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def ranked(self) -> bool:
        return self.n >= MIN_RANKED_SEEDS


@dataclass(frozen=True)
class Row:
    """A result with its statistics; ``rank`` is None for preliminary results (< 10 seeds)."""

    result: Result
    rank: int | None
    mean: float
    ci95: tuple[float, float] | None
    vs_baseline: Difference | None
    p_holm: float | None
    p_improvement: float | None
    dead_units: float | None
    effective_rank: float | None


def result_from_summary(label: str, summary: Mapping[str, Any]) -> Result:
    """A :class:`Result` from a run's ``summary.yaml``."""
    diagnostics = {k: v["per_seed"] for k, v in summary.get("final_diagnostics", {}).items()}
    return Result(label, summary["per_seed"], diagnostics, int(summary.get("n_diverged") or 0))


def layer_mean(result: Result, prefix: str, whole: str | None = None) -> float | None:
    """Mean over seeds of the per-seed mean over layers of the diagnostics ``<prefix>/*``, or of the
    one network-wide diagnostic ``whole`` (a task that measures it so, as icifar100) when present."""
    layers = [v for k, v in sorted(result.diagnostics.items())
              if k.startswith(prefix + "/") or k == (whole or prefix)]
    if not layers:
        return None
    return float(np.mean([np.mean([layer[s] for layer in layers]) for s in sorted(result.per_seed)]))


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def _mean(result: Result) -> float:
    return float(np.mean(list(result.per_seed.values())))


def ranks(results: Sequence[Result], higher_is_better: bool) -> dict[str, int]:
    """Rank of each result: 1 + how many results are significantly better than it.

    "Significantly better" = better mean and Holm-adjusted p < 0.05 over all pairwise tests
    (:func:`~plastibench.stats.compare_seeds`) among ``results``; equal ranks are rank groups.
    """
    pairs = [(a, b) for i, a in enumerate(results) for b in results[i + 1:]]
    tests = [compare_seeds(a.per_seed, b.per_seed) for a, b in pairs]
    p = holm([1.0 if t is None else t.p_value for t in tests])
    rank = {r.label: 1 for r in results}
    for (a, b), p_adj in zip(pairs, p):
        if p_adj < ALPHA:
            worse = b if _better(_mean(a), _mean(b), higher_is_better) else a
            rank[worse.label] += 1
    return rank


def _vs_baseline(results: Sequence[Result], baseline: Result | None, higher_is_better: bool):
    """Per label: (difference to baseline, Holm-adjusted p, P(improvement)); Holm over this family."""
    if baseline is None:
        return {}
    others = [r for r in results if r is not baseline]
    tests = {r.label: compare_seeds(r.per_seed, baseline.per_seed) for r in others}
    tested = [label for label, t in tests.items() if t is not None]
    adjusted = dict(zip(tested, holm([tests[label].p_value for label in tested])))
    base = list(baseline.per_seed.values())
    return {r.label: (tests[r.label], adjusted.get(r.label),
                      prob_improvement(list(r.per_seed.values()), base, higher_is_better)) for r in others}


def statistics_table(results: Sequence[Result], baseline: str | None, higher_is_better: bool) -> list[Row]:
    """Rows best first: ranked results by rank then mean, then preliminary ones (unranked) by mean.

    ``baseline`` names the result every other one is compared to (difference with its 95% CI,
    Holm-adjusted p over those comparisons, probability of improvement); None or absent: no
    comparison columns.
    """
    labels = [r.label for r in results]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    base = next((r for r in results if r.label == baseline), None)
    rank = ranks([r for r in results if r.ranked], higher_is_better)
    vs = _vs_baseline(results, base, higher_is_better)
    rows = []
    for r in results:
        mean, low, high = mean_ci95(list(r.per_seed.values()))
        diff, p_adj, p_imp = vs.get(r.label, (None, None, None))
        rows.append(Row(r, rank.get(r.label), mean, None if low is None else (low, high), diff,
                        None if p_adj is None else float(p_adj), p_imp,
                        layer_mean(r, "dead_fraction", "dormant_fraction"), layer_mean(r, "effective_rank")))
    sign = -1.0 if higher_is_better else 1.0
    return sorted(rows, key=lambda row: (row.rank is None, row.rank or 0, sign * row.mean, row.result.label))


# ----- text of the table, shared by the Markdown and the rich renderings -----

def num(x: float) -> str:
    """Four significant digits, trailing zeros kept (1.590, 0.02021, 12.00)."""
    return f"{x:#.4g}"


def prob(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def interval(value: float, ci: tuple[float, float] | None) -> str:
    return num(value) if ci is None else f"{num(value)} [{num(ci[0])}, {num(ci[1])}]"


def title(task: str, protocol: str, protocol_hash: str, metric: str, higher_is_better: bool) -> str:
    direction = "higher is better" if higher_is_better else "lower is better"
    return f"{task} / {protocol} (protocol {protocol_hash}): {metric}, {direction}"


def header(baseline: str) -> list[str]:
    return ["rank", "method", "mean [95% CI]", "seeds", f"Δ vs {baseline} [95% CI]", "p (Holm)",
            f"P(better than {baseline})", "dead units", "effective rank"]


def cells(row: Row, baseline: str) -> list[str]:
    """The text of each column of ``row``; the baseline's own comparison columns are "—"."""
    own = row.result.label == baseline
    if own or row.vs_baseline is None:
        diff = DASH if own or row.p_improvement is None else "n/a"
    else:
        d = row.vs_baseline
        diff = interval(d.difference, d.ci95) + (" W" if d.test == "welch" else "")
    optional = [row.p_holm, row.p_improvement]
    return [
        "preliminary" if row.rank is None else str(row.rank),
        row.result.label,
        interval(row.mean, row.ci95),
        str(row.result.n) + (f" ({row.result.n_diverged} diverged)" if row.result.n_diverged else ""),
        diff,
        *(DASH if own or v is None else prob(v) for v in optional),
        DASH if row.dead_units is None else num(row.dead_units),
        DASH if row.effective_rank is None else num(row.effective_rank),
    ]


def notes(baseline: str) -> list[str]:
    """What each column means, printed under the table."""
    return [
        "mean [95% CI]: mean over seeds of the per-seed score with its Student-t 95% interval.",
        f"Δ vs {baseline}: difference of means (method − {baseline}) with its 95% CI; paired t-test over common "
        "seeds (seed s is the same task stream and initial network for every method), Welch's t-test where the "
        "seeds differ (marked W).",
        f"p (Holm): two-sided p of that test, Holm-adjusted over all comparisons against {baseline} in the "
        f"table. P(better than {baseline}): Mann-Whitney U/(n·m), ties count ½.",
        f"rank: 1 + the number of methods significantly better (pairwise tests, Holm-adjusted, α = {ALPHA}); "
        f"equal ranks are not separated by the tests. Fewer than {MIN_RANKED_SEEDS} seeds: preliminary, "
        "unranked.",
        "dead units: end-of-run fraction of hidden units that are 0 on every probe input; effective rank: "
        "end-of-run effective rank of each hidden layer's representation; both averaged over layers, then seeds "
        "(icifar100: the reference's dormant fraction, active on < 1% of inputs pooled over layers, and the "
        "pooled layer's effective rank).",
    ]
