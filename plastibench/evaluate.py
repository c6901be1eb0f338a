"""Held-out evaluation of a seed-batched classifier: per-seed accuracy, in eval mode, on the device."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


@torch.no_grad()
def accuracy(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             select: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Fraction of correct argmax predictions per seed ``[S]`` (float64) over ``batches`` of
    ``x[S, B, ...], y[S, B]``. ``select`` maps logits ``[S, B, K]`` to the logits that compete
    (e.g. the classes seen so far). The net runs in eval mode (BatchNorm running statistics,
    no dropout) and is put back in the mode it was in; nothing leaves the device."""
    was_training = net.training
    net.eval()
    correct, count = None, 0
    try:
        for x, y in batches:
            out, _ = net(x)
            if select is not None:
                out = select(out)
            hits = (out.argmax(-1) == y).sum(1, dtype=torch.float64)
            correct = hits if correct is None else correct + hits
            count += y.shape[1]
    finally:
        net.train(was_training)
    if correct is None:
        raise ValueError("accuracy() needs at least one batch")
    return correct / count


def chunks(n: int, size: int) -> list[slice]:
    """``range(n)`` cut into consecutive slices of at most ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
