"""Counter-based random numbers: every draw is a pure function of (seed, step, purpose, index).

Seed k's random numbers never depend on which other seeds run beside it, on the device, or on how
often the program was interrupted and resumed: nothing is stateful. The hash is the 32-bit
"lowbias32" integer finaliser (Chris Wellons, 2018), chained over the keys; it is computed with
int64 tensor arithmetic masked to 32 bits, so CPU and GPU give identical bits.
"""

from __future__ import annotations

import hashlib
import math

import torch

_MASK = 0xFFFFFFFF


def purpose_id(name: str) -> int:
    """A stable 32-bit id for a purpose string such as ``"init/layer0"``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def hash32(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
    """32-bit hashes of shape ``[S, *shape]``: one independent stream per seed.

    ``step`` may also be a 1-D tensor of T steps; the result is then ``[S, T, *shape]``, equal to
    stacking the per-step results (this is how :class:`Block` draws many steps at once).
    """
    n = math.prod(shape)
    device = seeds.device
    index = torch.arange(n, device=device, dtype=torch.int64)
    step_t = torch.as_tensor(step, device=device, dtype=torch.int64)
    key = _mix(seeds.to(torch.int64).view(-1, *([1] * step_t.dim())) ^ purpose_id(purpose))
    key = _mix(key ^ (step_t & _MASK))
    key = _mix(key ^ ((step_t >> 32) & _MASK) * 0x9E3779B9)
    h = _mix(key.unsqueeze(-1) ^ _mix(index + 0x632BE5AB))
    return h.view(seeds.numel(), *step_t.shape, *shape)


def uniform(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...],
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Float32 uniforms on ``[low, high)`` with 24 random bits each, shape ``[S, *shape]``."""
    u = (hash32(seeds, step, purpose, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return low + (high - low) * u


def normal(seeds: torch.Tensor, step: int | torch.Tensor, purpose: str, shape: tuple[int, ...],
           std: float = 1.0) -> torch.Tensor:
    """Float32 normals N(0, std²) by Box–Muller, shape ``[S, *shape]``."""
    u1 = uniform(seeds, step, purpose + "/u1", shape)
    u2 = uniform(seeds, step, purpose + "/u2", shape)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))
    return std * r * torch.cos((2.0 * math.pi) * u2)


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
    """Draws of one purpose for a run of consecutive steps at once, served one step at a time.

    ``Block(seeds, "cbp/layer0/init", (K, fan_in), uniform)`` then ``block.at(step)`` gives exactly
    ``uniform(seeds, step, purpose, shape)``, but one batched hash per ``length`` steps replaces
    dozens of small kernels per step. Any step may be asked for; a miss refills the block.
    ``draw`` is an element-wise draw (``uniform``, ``normal``, ``bits``), not ``permutation``.
    """

    def __init__(self, seeds: torch.Tensor, purpose: str, shape: tuple[int, ...], draw=None,
                 length: int = 512, **kwargs):
        self.seeds, self.purpose, self.shape, self.kwargs = seeds, purpose, shape, kwargs
        self.draw = draw or uniform
        self.length = max(1, min(length, (1 << 22) // max(1, seeds.numel() * math.prod(shape))))
        self.start, self.values = None, None

    def at(self, step: int) -> torch.Tensor:
        if self.start is None or not self.start <= step < self.start + self.length:
            self.start = step
            steps = torch.arange(step, step + self.length, device=self.seeds.device)
            self.values = self.draw(self.seeds, steps, self.purpose, self.shape, **self.kwargs)
        return self.values[:, step - self.start]
