"""Counter-based random numbers: every draw is a pure function of (seed, step, purpose, index).

Seed k's random numbers never depend on which other seeds run beside it, on the device, or on how
often the program was interrupted and resumed: nothing is stateful. The hash is the 32-bit
"lowbias32" integer finaliser (Chris Wellons, 2018), chained over the keys; it is computed with
int64 tensor arithmetic masked to 32 bits, so CPU and GPU give identical bits. The index half of
a draw (``_mix(index + c)``) is cached per (size, device), 64 sizes at most, and the rest is mixed in
place: since issue 13 the same bits as before at a fraction of the memory traffic
(``tests/test_rng_bits.py``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import weakref

import torch

from .members import per_member

_MASK = 0xFFFFFFFF


def purpose_id(name: str) -> int:
    """A stable 32-bit id for a purpose string such as ``"init/layer0"``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of ``x``'s low 32 bits, as a new int64 tensor."""
    return _mix_(x & _MASK)


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on an int64 tensor whose values are already within [0, 2^32): the same
    arithmetic as :func:`_mix`, with one scratch tensor of ``x``'s size instead of eight temporaries."""
    shifted = torch.empty_like(x)
    x ^= torch.bitwise_right_shift(x, 16, out=shifted)
    x.mul_(0x7FEB352D).bitwise_and_(_MASK)
    x ^= torch.bitwise_right_shift(x, 15, out=shifted)
    x.mul_(0x846CA68B).bitwise_and_(_MASK)
    x ^= torch.bitwise_right_shift(x, 16, out=shifted)
    return x


@functools.lru_cache(maxsize=64)
def _index_hashes(n: int, device: torch.device) -> torch.Tensor:
    """``_mix(arange(n) + 0x632BE5AB)``: the per-index half of every draw of ``n`` elements, which
    depends on nothing else, so it is computed once per (n, device) (read-only)."""
    return _mix_(torch.arange(n, device=device, dtype=torch.int64) + 0x632BE5AB)


def _index_part(n: int, device: torch.device) -> torch.Tensor:
    """:func:`_index_hashes`, except while a CUDA graph is being captured: a tensor allocated in the
    capture belongs to the graph's pool, so it is not cached then."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _mix_(torch.arange(n, device=device, dtype=torch.int64) + 0x632BE5AB)
    return _index_hashes(n, device)


def hash32(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
    """32-bit hashes of shape ``[S, *shape]``: one independent stream per seed.

    ``step`` may also be a 1-D tensor of T steps; the result is then ``[S, T, *shape]``, equal to
    stacking the per-step results (this is how :class:`Block` draws many steps at once).
    """
    n = math.prod(shape)
    device = seeds.device
    step_t = torch.as_tensor(step, device=device, dtype=torch.int64)
    key = _mix(seeds.to(torch.int64).view(-1, *([1] * step_t.dim())) ^ purpose_id(purpose))
    key = _mix(key ^ (step_t & _MASK))
    key = _mix(key ^ ((step_t >> 32) & _MASK) * 0x9E3779B9)
    h = _mix_(key.unsqueeze(-1) ^ _index_part(n, device))
    return h.view(seeds.numel(), *step_t.shape, *shape)


def uniform(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...],
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Float32 uniforms on ``[low, high)`` with 24 random bits each, shape ``[S, *shape]``."""
    u = hash32(seeds, step, purpose, shape).bitwise_right_shift_(8).to(torch.float32).mul_(1.0 / (1 << 24))
    if low == 0.0 and high == 1.0:
        return u  # 0 + 1·u is u, bit for bit
    return low + (high - low) * u


def normal(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...],
           std: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Float32 normals N(0, std²) by Box–Muller, shape ``[S, *shape]``; ``std`` a number or one per
    seed ``[S]`` (a per-member value, :mod:`plastibench.members`: the same numbers as that seed's
    draw with its std as a number)."""
    r = uniform(seeds, step, purpose + "/u1", shape).neg_().log1p_().mul_(-2.0).sqrt_()
    angle = uniform(seeds, step, purpose + "/u2", shape).mul_(2.0 * math.pi).cos_()
    return r.mul_(per_member(std, r)).mul_(angle)  # (std·r)·cos, in place; the same bits


def permutation(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` per seed, shape ``[S, n]`` (int64).

    Sorting 64-bit keys built from two independent hashes makes ties practically impossible;
    a stable sort breaks any that remain by position.
    """
    hi = hash32(seeds, step, purpose + "/hi", (n,))
    lo = hash32(seeds, step, purpose + "/lo", (n,))
    keys = (hi << 31) | (lo >> 1)
    return torch.sort(keys, dim=1, stable=True).indices


def bits(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Fair random bits as float32 0/1, shape ``[S, *shape]``."""
    return ((hash32(seeds, step, purpose, shape) >> 31) & 1).to(torch.float32)


class Block:
    """Draws of one purpose for a run of consecutive steps, prepared between steps, read inside them.

    ``Block(seeds, "cbp/layer0/init", (K, fan_in), uniform)`` then ``block.at(step)`` gives exactly
    ``uniform(seeds, step, purpose, shape)`` for a device step ``step`` (a 0-dim int64 tensor), but
    one batched hash per segment of steps replaces dozens of small kernels per step. ``at`` reads a
    persistent buffer at ``step - start`` (both on the device): no host value, no refill inside a step,
    so a step that draws from a block can be captured once and replayed.

    The engine prepares every live block of its seeds before each segment of steps
    (:func:`prepare`). A segment of ``n`` steps from ``first`` needs ``[first, first + n]`` (a draw
    keyed one step ahead, an optimizer's own step count, is covered too) and is at most
    ``length - 1`` steps. When the steps already drawn do not cover it, the block draws from
    ``first`` the larger of ``n + 1`` steps and twice its previous draw, at most ``length``: a long run
    refills about once per buffer, and a short one (a test) draws at most twice what it reads, not
    ``length`` steps. A block whose buffer would hold fewer than ``MIN_LENGTH`` steps (large shapes,
    many seeds) draws directly from the device step instead: the same values, a few more kernels per
    step. ``draw`` is an element-wise draw (``uniform``, ``normal``, ``bits``), not ``permutation``.
    """

    MIN_LENGTH = 8

    def __init__(self, seeds: torch.Tensor, purpose: str, shape: tuple[int, ...], draw=None,
                 length: int = 512, **kwargs):
        self.seeds, self.purpose, self.shape, self.kwargs = seeds, purpose, shape, kwargs
        self.draw = draw or uniform
        self.length = max(1, min(length, (1 << 22) // max(1, seeds.numel() * math.prod(shape))))
        self.direct = self.length < self.MIN_LENGTH
        self.first: int | None = None  # host copy of ``start``, for planning only
        self.drawn = 0  # how many steps from ``first`` the buffer holds (NaN after them)
        if not self.direct:
            self.start = torch.zeros((), dtype=torch.int64, device=seeds.device)
            # NaN until prepared: a read outside a prepared segment shows, rather than returning garbage
            self.values = torch.full((seeds.numel(), self.length, *shape), math.nan, device=seeds.device)
        _runs(seeds).blocks.add(self)
        if _runs(seeds).segment is not None:
            self.prepare(*_runs(seeds).segment)

    def prepare(self, first: int, n_steps: int) -> None:
        """Make ``at`` valid for the steps ``first .. first + n_steps`` (host ints; between steps)."""
        if self.direct:
            return
        if n_steps >= self.length:
            raise ValueError(f"a segment of {n_steps} steps exceeds block {self.purpose!r} "
                             f"({self.length} steps); plan segments with rng.max_segment()")
        if self.first is not None and self.first <= first and first + n_steps < self.first + self.drawn:
            return
        self.drawn = min(self.length, max(n_steps + 1, 2 * self.drawn))  # never shrinks: NaN beyond it
        steps = torch.arange(first, first + self.drawn, device=self.seeds.device)
        self.values[:, :self.drawn].copy_(self.draw(self.seeds, steps, self.purpose, self.shape, **self.kwargs))
        self.start.fill_(first)
        self.first = first

    def at(self, step: int | torch.Tensor) -> torch.Tensor:
        """The draw of ``step`` ``[S, *shape]``; ``step`` a device tensor inside a step."""
        if self.direct:
            return self.draw(self.seeds, step, self.purpose, self.shape, **self.kwargs)
        if not torch.is_tensor(step):  # a host int, between steps (set-up, tests)
            self.prepare(step, 0)
            step = torch.tensor(step, device=self.seeds.device)
        offset = (step.to(torch.int64) - self.start).view(1)
        return self.values.index_select(1, offset).squeeze(1)


class _Run:
    """The live blocks of one seeds tensor, and the segment last prepared for them (a block created
    inside a segment, e.g. lazily at its first forward pass, prepares itself for it)."""

    def __init__(self):
        self.blocks: weakref.WeakSet[Block] = weakref.WeakSet()
        self.segment: tuple[int, int] | None = None


_RUNS: dict[int, tuple[weakref.ref, _Run]] = {}


def _runs(seeds: torch.Tensor) -> _Run:
    """The :class:`_Run` of ``seeds`` (keyed by identity: a run owns its seeds tensor)."""
    entry = _RUNS.get(id(seeds))
    if entry is None or entry[0]() is not seeds:
        entry = _RUNS[id(seeds)] = (weakref.ref(seeds, lambda _, key=id(seeds): _RUNS.pop(key, None)), _Run())
    return entry[1]


def prepare(seeds: torch.Tensor, first: int, n_steps: int) -> None:
    """Prepare every live :class:`Block` of ``seeds`` for the steps ``first .. first + n_steps``."""
    run = _runs(seeds)
    run.segment = (first, n_steps)
    for block in list(run.blocks):
        block.prepare(first, n_steps)


def max_segment(seeds: torch.Tensor) -> int | None:
    """The longest segment every live block of ``seeds`` can serve (None: no limit)."""
    lengths = [b.length - 1 for b in _runs(seeds).blocks if not b.direct]
    return min(lengths) if lengths else None
