"""plastibench.rng's faster arithmetic (issue 13) gives the same bits as the formula it replaced:
every leaderboard number depends on them."""

from __future__ import annotations

import hashlib
import math

import torch

from plastibench import rng

MASK = 0xFFFFFFFF


def mix(x):
    """lowbias32, restated as the module computed it before issue 13 (out of place, int64)."""
    x = x & MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK
    return x ^ (x >> 16)


def hash32(seeds, step, purpose, shape):
    n = math.prod(shape)
    step = torch.as_tensor(step, dtype=torch.int64)
    key = mix(seeds.view(-1, *([1] * step.dim())) ^ rng.purpose_id(purpose))
    key = mix(key ^ (step & MASK))
    key = mix(key ^ ((step >> 32) & MASK) * 0x9E3779B9)
    return mix(key.unsqueeze(-1) ^ mix(torch.arange(n) + 0x632BE5AB)).view(seeds.numel(), *step.shape, *shape)


def uniform(seeds, step, purpose, shape, low=0.0, high=1.0):
    return low + (high - low) * ((hash32(seeds, step, purpose, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24)))


def normal(seeds, step, purpose, shape, std=1.0):
    u1, u2 = uniform(seeds, step, purpose + "/u1", shape), uniform(seeds, step, purpose + "/u2", shape)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))
    if torch.is_tensor(std):
        std = std.to(r.dtype).view(-1, *([1] * (r.dim() - 1)))
    return std * r * torch.cos((2.0 * math.pi) * u2)


def test_draws_equal_the_previous_formula_bit_for_bit_on_random_keys():
    g = torch.Generator().manual_seed(13)
    for _ in range(5):
        seeds = torch.randint(0, 2**62, (3,), generator=g)
        step = int(torch.randint(0, 2**40, (), generator=g))
        steps = torch.randint(0, 2**40, (4,), generator=g)
        std = torch.rand(3, generator=g, dtype=torch.float64)
        for shape in ((), (7,), (5, 33)):
            assert torch.equal(rng.hash32(seeds, step, "h", shape), hash32(seeds, step, "h", shape))
            assert torch.equal(rng.hash32(seeds, steps, "h", shape), hash32(seeds, steps, "h", shape))
            assert torch.equal(rng.uniform(seeds, step, "u", shape), uniform(seeds, step, "u", shape))
            assert torch.equal(rng.uniform(seeds, steps, "u", shape, -0.3, 2.0),
                               uniform(seeds, steps, "u", shape, -0.3, 2.0))
            for s in (1.0, 0.05, std):
                assert torch.equal(rng.normal(seeds, step, "n", shape, s), normal(seeds, step, "n", shape, s))
            assert torch.equal(rng.normal(seeds, steps, "n", shape), normal(seeds, steps, "n", shape))


def test_draws_equal_the_numbers_the_previous_code_gave():
    """A digest of draws printed by the code before issue 13 (commit 38a9a03)."""
    s = torch.tensor([0, 7, 2**33 + 5])
    steps = torch.arange(2**32 - 2, 2**32 + 3)
    draws = (rng.hash32(s, 12, "a", (5, 7)), rng.hash32(s, steps, "b", (3,)),
             rng.uniform(s, 3, "c", (1000,)), rng.uniform(s, 3, "c", (100,), -0.5, 2.0),
             rng.normal(s, 9, "d", (1000,)), rng.normal(s, steps, "d", (10,), std=torch.tensor([0.1, 2.0, 3.0])),
             rng.normal(s, 9, "e", (50,), std=0.01), rng.bits(s, 1, "f", (64,)), rng.permutation(s, 4, "g", 300))
    digest = hashlib.sha256()
    for t in draws:
        digest.update(t.contiguous().numpy().tobytes())
    assert digest.hexdigest()[:16] == "24479a49df94818e"


def test_the_per_index_hashes_are_computed_once_per_size():
    """The half of a draw that depends on the element index only is cached, not redrawn per call
    (UPGD draws ~266k normals per seed per step on ipmnist), and never written by a draw."""
    seeds = torch.tensor([4, 5])
    first = rng.normal(seeds, 1, "x", (4321,))
    cached = rng._index_hashes(4321, seeds.device)
    before = cached.clone()
    rng.normal(seeds, 2, "y", (4321,))
    rng.uniform(seeds, 3, "z", (4321,))
    assert rng._index_hashes(4321, seeds.device) is cached and torch.equal(cached, before)
    assert torch.equal(rng.normal(seeds, 1, "x", (4321,)), first)
