"""EMNIST ``balanced``, read from the official NIST archive ``gzip.zip``.

Split: UPGD's label-permuted EMNIST (mohmdelsayed/upgd ``core/task/label_permuted_emnist.py``)
loads ``torchvision.datasets.EMNIST(..., split="balanced")`` (l.39-43; its training set, l.14)
with 47 outputs (l.18): the archive's ``gzip/emnist-balanced-*`` IDX files, 112,800 training and
18,800 test images.

Orientation: EMNIST stores each image transposed relative to MNIST (stored row r is column r of
the upright character). torchvision (0.11.1, pinned in UPGD's ``requirements.txt``) reads the IDX
files as stored, without transposing (``read_image_file``), and UPGD flattens what it gets; so do
we: ``images[i].T`` is the upright character. For UPGD's MLP this is a fixed permutation of the
inputs; a convolutional net sees transposed characters, as it did under UPGD.

Checksums: the archive's MD5 is torchvision's; its SHA-256 (561,753,746 bytes) is the one
TensorFlow Datasets pins (``url_checksums/emnist.txt``) and independent public scripts repeat.
No published checksum of the member files was found, so they are not extracted: they are read
from the archive, and the whole archive is verified on every load (a few seconds).
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plastibench.data.download import download_hint, download_verified
from plastibench.data.files import file_digests, require_official
from plastibench.data.mnist import parse_idx
from plastibench.data.paths import ENV_VAR, DataUnavailable, resolve_data_dir

# The current NIST address first (torchvision's today), then the one torchvision 0.11.1 used.
URLS = (
    "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
    "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/gzip.zip",
)
FOLDER = "emnist"
ARCHIVE = "gzip.zip"
ARCHIVE_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"
ARCHIVE_SHA256 = "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"
CLASSES = 47
MEMBERS = {split: (f"gzip/emnist-balanced-{split}-images-idx3-ubyte.gz",
                   f"gzip/emnist-balanced-{split}-labels-idx1-ubyte.gz") for split in ("train", "test")}


@dataclass(frozen=True, eq=False)
class Emnist:
    """EMNIST balanced loaded from the official archive.

    train_images, test_images: uint8 ``[N, 28, 28]`` as stored (transposed: ``images[i].T`` is
    upright); train_labels, test_labels: int64 ``[N]`` in 0..46.
    sha256: ``{"gzip.zip": SHA-256 of the archive loaded}``.
    verified: True when the archive matched the official MD5 and SHA-256.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    sha256: dict[str, str]
    verified: bool


def _missing_message(folder: Path, urls: Sequence[str], failure: str | None) -> str:
    return "\n".join([
        f"EMNIST not found: no {ARCHIVE} in {folder}.",
        download_hint("emnist", folder.parent, urls, failure),
        f"Or download {urls[0]} yourself (561,753,746 bytes) and put it in {folder} as {ARCHIVE}.",
        f"To use another directory, pass --data-dir DIR or set {ENV_VAR}=DIR "
        f"(looked for as DIR/{FOLDER}/{ARCHIVE}).",
    ])


def _read_split(archive: zipfile.ZipFile, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split, from its two gzipped IDX members."""
    images, labels = (parse_idx(gzip.decompress(archive.read(name)), name) for name in MEMBERS[split])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{MEMBERS[split][0]}: expected uint8 images [N, 28, 28], "
                         f"got {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.shape != (len(images),) or \
            (labels.size and labels.max() > CLASSES - 1):
        raise ValueError(f"{MEMBERS[split][1]}: expected {len(images)} uint8 labels in 0..{CLASSES - 1}, "
                         f"got {labels.dtype} {list(labels.shape)}")
    return images, labels.astype(np.int64)


def load_emnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    urls: Sequence[str] | None = None,
) -> Emnist:
    """Load EMNIST balanced (train and test) from ``resolve_data_dir(data_dir) / "emnist" / "gzip.zip"``.

    A missing archive is downloaded from ``urls`` (default ``URLS``, tried in order; SHA-256
    checked, atomic) when ``download`` is true. With ``verify`` the archive must match the
    official MD5 and SHA-256; either way its SHA-256 is returned. Raises ``DataUnavailable`` with
    a user-facing message when the data is missing, corrupt or (with ``verify``) not official.
    """
    urls = URLS if urls is None else urls
    folder = resolve_data_dir(data_dir) / FOLDER
    path = folder / ARCHIVE
    if not path.is_file():
        if not download:
            raise DataUnavailable(_missing_message(folder, urls, None))
        try:
            download_verified(urls, path, ARCHIVE_SHA256, gunzip=False, timeout=60)
        except DataUnavailable as exc:
            raise DataUnavailable(_missing_message(folder, urls, str(exc))) from exc
    digests = file_digests(path)
    if verify:
        require_official("EMNIST", path, digests, ARCHIVE_MD5, ARCHIVE_SHA256,
                         "Delete it so that it is downloaded again.")
    try:
        with zipfile.ZipFile(path) as archive:
            train, test = _read_split(archive, "train"), _read_split(archive, "test")
    except (KeyError, zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataUnavailable(f"Unreadable EMNIST archive {path}: {exc}. Delete it so that it is "
                              "downloaded again.") from exc
    return Emnist(*train, *test, {ARCHIVE: digests[1]}, digests == (ARCHIVE_MD5, ARCHIVE_SHA256))
