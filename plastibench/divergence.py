"""Divergence is a result, not a crash: which seeds went non-finite, when, and how they score.

Inside every step the engine marks a seed diverged at the first step whose loss is not finite
(:class:`Divergence`, device tensors: capturable). At every task end it also checks each seed's
parameters and optimizer state; a diverged seed's parameters and optimizer state are then set to 0,
so that nothing non-finite reaches the diagnostics or any later computation (seeds share no
parameter, so no other seed is ever touched). From the task it diverged in on, a diverged seed's
per-task metric and diagnostics are recorded as NaN (not measured) in ``metrics.csv``, with a
``diverged`` row (1 from that task on) and a ``diverged_at_step`` row (the global step in the task it
diverged in, else -1).

How a diverged seed scores is the protocol's ``diverged_score`` (part of its hash):

* ``"last-finite"`` (default): each NaN task value is replaced by the seed's last finite task value
  (carried forward); a seed with no finite task at all scores the worst possible value;
* ``"worst"``: each NaN task value is the worst possible value: 0 for an accuracy-like metric
  (higher is better), +inf for an error (lower is better).

A diverged seed is never dropped: it keeps its place in ``per_seed``, and summaries, ``compare``,
plots and the leaderboard say how many seeds diverged.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

RULES = ("last-finite", "worst")


class Divergence:
    """Per-seed flags on the device: ``alive[S]`` and ``at_step[S]`` (-1 while finite)."""

    def __init__(self, n_seeds: int, device: torch.device):
        self.alive = torch.ones(n_seeds, dtype=torch.bool, device=device)
        self.at_step = torch.full((n_seeds,), -1, dtype=torch.int64, device=device)

    def observe_loss(self, loss: torch.Tensor, step: torch.Tensor) -> None:
        """Inside a step: a seed whose loss ``[S]`` is not finite diverges at ``step``."""
        self.mark(torch.isfinite(loss), step)

    def mark(self, finite: torch.Tensor, step: torch.Tensor | int) -> None:
        newly = self.alive & ~finite
        self.at_step.copy_(torch.where(newly, step, self.at_step))
        self.alive.logical_and_(finite)

    @torch.no_grad()
    def check_and_clear(self, tensors: Iterable[torch.Tensor], step: int) -> None:
        """Between steps: mark seeds with a non-finite value in any of ``tensors`` (those with the seed
        axis first), then set every such tensor of a diverged seed to 0."""
        tensors = [t for t in tensors if t.dim() > 0 and t.shape[0] == self.alive.shape[0]
                   and t.is_floating_point()]
        if tensors:
            finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in tensors]).all(0)
            self.mark(finite, step)
        dead = ~self.alive
        for t in tensors:
            t.masked_fill_(dead.view(-1, *[1] * (t.dim() - 1)), 0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"alive": self.alive.clone(), "at_step": self.at_step.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.alive.copy_(state["alive"])
        self.at_step.copy_(state["at_step"])


def worst(higher_is_better: bool) -> float:
    return 0.0 if higher_is_better else float("inf")


def scored(values: np.ndarray, rule: str, higher_is_better: bool) -> np.ndarray:
    """Per-task values ``[T, S]`` with NaN where a seed had diverged, made scoreable by ``rule``."""
    if rule not in RULES:
        raise ValueError(f"unknown diverged_score {rule!r}; known: {', '.join(RULES)}")
    out = np.array(values, dtype=float, copy=True)
    if rule == "worst":
        out[np.isnan(out)] = worst(higher_is_better)
        return out
    last = np.full(out.shape[1], worst(higher_is_better))
    for t in range(out.shape[0]):
        missing = np.isnan(out[t])
        out[t, missing] = last[missing]
        last = out[t]
    return out


def diverged_seeds(seeds: Sequence[int], records: Sequence[Mapping[str, np.ndarray]]) -> dict[int, int]:
    """``{seed: global step}`` of every seed that diverged, from the records' rows."""
    out: dict[int, int] = {}
    for record in records:
        at = record.get("diverged_at_step")
        if at is None:
            continue
        for seed, step in zip(seeds, at):
            if np.isfinite(step) and step >= 0 and int(seed) not in out:
                out[int(seed)] = int(step)
    return out
