"""Re-draw parameters from the network's own initialisation, for the reset baselines.

A reset at task t builds a fresh network with the task's ``network_factory`` from derived seeds,
a 32-bit hash of (seed, t) (:func:`draw_seeds`), so seed k's redraw depends only on (k, t), and
copies the chosen tensors into the live network in place (the optimizer keeps its references).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from . import rng
from .method import HyperparameterError


def draw_seeds(seeds: torch.Tensor, draw: int) -> torch.Tensor:
    """The keys of redraw ``draw`` for ``seeds[S]``: a hash of (seed, draw), int64 ``[S]``."""
    return rng.hash32(seeds, draw, "reinit/draw", ()).to(torch.int64)


def check_redrawable(net: torch.nn.Module, factory: Callable[[torch.Tensor], torch.nn.Module],
                     seeds: torch.Tensor, names: Iterable[str], method: str) -> None:
    """Raise a ``HyperparameterError`` at once (not at the first boundary, hours later) when the
    task's network has no tensor of the same name and shape for one of ``names``."""
    fresh = dict(factory(seeds).named_parameters())
    live = dict(net.named_parameters())
    bad = [n for n in names if n not in fresh or fresh[n].shape != live[n].shape]
    if bad:
        raise HyperparameterError(f"{method} re-draws the task's own network, but {', '.join(bad)} differ "
                                  "from it: it cannot be combined with a method that changes those layers "
                                  "(e.g. crelu).")


def redraw(net: torch.nn.Module, factory: Callable[[torch.Tensor], torch.nn.Module], seeds: torch.Tensor,
           draw: int, names: Iterable[str] | None = None, *, buffers: bool = True) -> list[torch.Tensor]:
    """Set ``net``'s parameters (and, with ``buffers``, its buffers) named in ``names`` (default:
    all) to those of a fresh network drawn with key ``draw``; returns the tensors changed."""
    fresh = factory(draw_seeds(seeds, draw))
    live = dict(net.named_parameters())
    new = dict(fresh.named_parameters())
    if buffers:
        live.update(net.named_buffers())
        new.update(fresh.named_buffers())
    chosen = list(live) if names is None else list(names)
    changed = []
    with torch.no_grad():
        for name in chosen:
            if name not in new or new[name].shape != live[name].shape:
                raise RuntimeError(f"cannot redraw {name!r}: the task's network has no tensor of that shape "
                                   "(was the architecture changed by another method?)")
            live[name].copy_(new[name])
            changed.append(live[name])
    return changed


def head_names(net: torch.nn.Module) -> list[str]:
    """Names of the output layer's weight and bias (the last of ``net.weight_tensors()``)."""
    head = net.weight_tensors()[-1]
    name = next(n for n, p in net.named_parameters() if p is head)
    prefix = name.rsplit(".", 1)[0]
    return [name, f"{prefix}.bias"]


@torch.no_grad()
def zero_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Iterable[torch.Tensor]) -> None:
    """Zero every per-element state (momentum, Adam moments) the optimizer holds for ``tensors``."""
    for p in tensors:
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value.zero_()
