"""Shared fixtures: a tiny MNIST in the official on-disk format, and a quiet torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plastibench.data.mnist import write_idx

# The test networks are tiny: one intra-op thread is much faster than several, above all when
# other processes share the CPU (spinning OpenMP threads then slow small ops down tenfold).
torch.set_num_threads(1)

TINY_TRAIN = 300
TINY_TEST = 50


def write_tiny_mnist(root: Path, n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, seed: int = 0) -> Path:
    """Random 28x28 uint8 images with labels 0-9, gzipped IDX under ``root/mnist/``; returns ``root``."""
    g = np.random.default_rng(seed)
    folder = Path(root) / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10  # every class present
        g.shuffle(labels)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return Path(root)


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    """Data root holding a 300-image MNIST (official names, gzipped IDX) in ``<root>/mnist/``.

    Its checksums are not the official ones: runs need ``--data-dir <root> --no-verify``
    (``verify=False`` through the API).
    """
    return write_tiny_mnist(tmp_path / "data")


@pytest.fixture
def offline(monkeypatch):
    """Make every MNIST download fail at once, as on a machine without network."""
    from plastibench.data import mnist
    from plastibench.data.paths import DataUnavailable

    def fail(urls, dest, sha256, **kwargs):
        raise DataUnavailable(f"Could not download {Path(dest).name} (network disabled in tests)")

    monkeypatch.setattr(mnist, "download_verified", fail)
