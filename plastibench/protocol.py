"""A protocol is frozen data with a stable hash.

Two numbers are compared only when they came from the same protocol: the hash of the canonical
JSON of every field goes into every result. Changing anything that could change a number
(lengths, optimizer, data variant, summary window) changes the hash; bump ``version`` too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted((mapping or {}).items())))


@dataclass(frozen=True)
class OptimizerSpec:
    """The protocol's optimizer. ``weight_decay`` is PyTorch's coupled L2, as in the reference."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


# Fields added after the first protocols were hashed, with their defaults: left out of the canonical
# JSON while at the default, so adding a field never changes an existing protocol's hash.
_ADDED_FIELDS = {"diverged_score": "last-finite"}


@dataclass(frozen=True)
class Protocol:
    """Everything that defines a number: stream lengths, batch, optimizer, task settings, metric.

    ``n_tasks`` tasks of ``steps_per_task`` optimizer steps each, mini-batch ``batch_size``.
    The per-seed score is the mean of the per-task ``metric`` over the last ``summary_fraction``
    of tasks (where loss of plasticity shows). ``settings`` holds task-specific fields.
    """

    task: str
    name: str
    version: int
    n_tasks: int
    steps_per_task: int
    batch_size: int
    optimizer: OptimizerSpec
    metric: str
    higher_is_better: bool
    summary_fraction: float = 0.1
    probe_size: int = 1000
    default_seeds: int = 10
    description: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    # How a seed that diverged (non-finite loss, parameters or optimizer state) scores: see
    # plastibench.divergence ("last-finite" or "worst").
    diverged_score: str = "last-finite"

    def __post_init__(self):
        object.__setattr__(self, "settings", _freeze(self.settings))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["settings"] = dict(self.settings)
        data["optimizer"] = {**asdict(self.optimizer), "betas": list(self.optimizer.betas)}
        return data

    @property
    def hash(self) -> str:
        """First 16 hex digits of SHA-256 over the canonical JSON of every field but the prose."""
        data = self.to_dict()
        data.pop("description")
        data.pop("default_seeds")
        for name, default in _ADDED_FIELDS.items():  # at their default, later fields leave old hashes be
            if data.get(name) == default:
                data.pop(name)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def total_steps(self) -> int:
        return self.n_tasks * self.steps_per_task

    @property
    def summary_tasks(self) -> int:
        """How many final tasks the per-seed score averages over (at least one)."""
        return self.summary_tasks_at(self.n_tasks)

    def summary_tasks_at(self, n_tasks: int) -> int:
        """How many final tasks the score of the first ``n_tasks`` tasks averages over (at least one)."""
        return max(1, round(n_tasks * self.summary_fraction))
