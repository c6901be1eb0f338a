"""The run's step counters, on the device: what makes a training step a pure function of device state.

A step reads ``clock.step`` (the global index of the step in flight) and ``clock.in_task`` (its index
within the task) as 0-dim int64 device tensors and never a host value that changes from step to step;
the engine sets them between segments of steps and the step advances them in place (``tick``). So K
consecutive steps can be captured once (a CUDA graph, a compiled block) and replayed.
"""

from __future__ import annotations

import torch


class StepClock:
    """``step`` and ``in_task``: 0-dim int64 tensors on the run's device, advanced in place."""

    def __init__(self, device: torch.device):
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.in_task = torch.zeros((), dtype=torch.int64, device=device)

    def set(self, step: int, in_task: int) -> None:
        """Between steps: the next step is global step ``step``, step ``in_task`` of its task."""
        self.step.fill_(step)
        self.in_task.fill_(in_task)

    def tick(self) -> None:
        """Inside a step, last: advance both counters."""
        self.step.add_(1)
        self.in_task.add_(1)
