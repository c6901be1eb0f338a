"""One work item's run and its :class:`Outcome`, for the executors (:mod:`plastibench.executors`)."""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch

Fn = Callable[[Any, str, "int | None"], dict]


@dataclass(frozen=True)
class Outcome:
    """What became of item ``index``: ``result`` (fn's dict) when ``ok``; else ``error``, the
    traceback's last line followed, on Slurm, by the log that holds the whole of it, and
    ``traceback``, the whole of it."""

    index: int
    ok: bool
    result: dict | None = None
    error: str | None = None
    traceback: str | None = None


def failure(index: int, text: str, where: str | None = None) -> Outcome:
    """The outcome of an item whose traceback (or error message) is ``text``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "unknown error"
    return Outcome(index, False, error=last if where is None else f"{last} (log: {where})", traceback=text)


@contextmanager
def torch_threads(threads: int | None):
    """Within: ``threads`` torch threads (None: as it was); restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def attempt(fn: Fn, index: int, item: Any, device: str, threads: int | None) -> Outcome:
    """``fn(item, device, threads)`` with ``threads`` torch threads; an exception becomes a failure."""
    try:
        with torch_threads(threads):
            return Outcome(index, True, result=fn(item, device, threads))
    except Exception:
        return failure(index, traceback.format_exc())


