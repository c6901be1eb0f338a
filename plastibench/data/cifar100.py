"""CIFAR-100 in its official on-disk format (the python-pickle tarball, torchvision layout)."""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plastibench.data.download import download_verified
from plastibench.data.files import file_digests, read_pickle
from plastibench.data.paths import ENV_VAR, DataUnavailable, resolve_data_dir

URLS = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
# MD5s as published by torchvision; SHA-256s identical in several independent public loaders
# (archive: Keras and torchvision's prototype datasets; 169,001,437 bytes).
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
SHA256 = {
    "train": "735e79b04f092ca3d2e6d07f368c0a7d70d48c48d28865950cc24454cf45129b",
    "test": "4b67687d9933c4db8f0831104447f15b93774f4f464bd0516f0f0f2ac83b7864",
    "meta": "a5d4786345c961390f865e93b434dbd5c6904ce880667e0cb888c97d449f28b9",
}
@dataclass(frozen=True, eq=False)
class Cifar100:
    """CIFAR-100 loaded from the official files.

    train_images, test_images: uint8 ``[N, 3, 32, 32]`` (RGB); train_labels, test_labels:
    int64 ``[N]`` fine labels in 0..99; label_names: the 100 fine label names.
    sha256: file name (train, test, meta) -> SHA-256 of the file loaded.
    verified: True when every file matched the official MD5 and SHA-256.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]
    sha256: dict[str, str]
    verified: bool


def _mismatch(path: Path, kind: str, actual: str, expected: str, remedy: str) -> DataUnavailable:
    return DataUnavailable(
        f"CIFAR-100 file {path} does not contain the official data: its {kind} is {actual}, "
        f"expected {expected} (checksum mismatch). {remedy} To use it anyway, pass --no-verify; "
        "results are then marked unverified.")


def _check(path: Path, digests: tuple[str, str], md5: str, sha256: str, remedy: str) -> None:
    for kind, actual, expected in (("MD5", digests[0], md5), ("SHA-256", digests[1], sha256)):
        if actual != expected:
            raise _mismatch(path, kind, actual, expected, remedy)


def _extract(archive: Path, folder: Path, names: Sequence[str]) -> None:
    """Extract ``cifar-100-python/<name>`` for each name into ``folder``, atomically.

    Only those exact member names are read, and only if they are regular files: no other
    member (absolute path, ``..``, link, device) is ever written anywhere.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = tar.getmember(f"{FOLDER}/{name}")
                if not member.isfile():
                    raise DataUnavailable(f"CIFAR-100 archive {archive}: member {member.name} is not a "
                                          "regular file; refusing to extract it. Delete the archive "
                                          "so that it is downloaded again.")
                tmp = folder / f"{name}.part-{secrets.token_hex(4)}"
                try:
                    with tar.extractfile(member) as src, open(tmp, "xb") as out:
                        shutil.copyfileobj(src, out)
                    os.replace(tmp, folder / name)
                finally:
                    tmp.unlink(missing_ok=True)
    except (KeyError, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataUnavailable(f"CIFAR-100 archive {archive} is unreadable or incomplete ({exc}). "
                              "Delete it so that it is downloaded again.") from exc


def _missing_message(root: Path, missing: list[str], urls: Sequence[str], failure: str | None) -> str:
    folder = root / FOLDER
    lines = [f"CIFAR-100 not found: missing {', '.join(missing)} in {folder}."]
    if failure is None:
        lines.append(f"Downloading is disabled; allow it (plastibench data fetch cifar100) to fetch "
                     f"{', '.join(urls)}.")
    else:
        lines.append(f"Downloading failed:\n{failure}\nWhen the network is back, fetch it with: "
                     f"plastibench data fetch cifar100 --data-dir {root}")
    lines += [
        f"Or download {urls[0]} yourself and put {ARCHIVE} in {root} (it is extracted there), "
        f"or extract it so that {folder}/train, test and meta exist.",
        f"To use another directory, pass --data-dir DIR or set {ENV_VAR}=DIR "
        f"(looked for in DIR/{FOLDER}/).",
    ]
    return "\n".join(lines)


def _parse(path: Path, name: str) -> Any:
    """Parsed content of one official file: (images, labels) for train/test, label names for meta."""
    try:
        d = read_pickle(path)
        if name == "meta":
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in d["fine_label_names"])
            if len(names) != 100:
                raise ValueError(f"expected 100 fine_label_names, got {len(names)}")
            return names
        data, labels = np.asarray(d["data"]), np.asarray(d["fine_labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"expected 'data' uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or \
                (labels.size and not 0 <= labels.min() <= labels.max() <= 99):
            raise ValueError(f"expected {len(data)} 'fine_labels' in 0..99")
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
    except (KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise DataUnavailable(f"Unreadable CIFAR-100 file {path}: {exc}. Delete it so that it is "
                              "extracted or downloaded again.") from exc


def load_cifar100(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    urls: Sequence[str] | None = None,
) -> Cifar100:
    """Load CIFAR-100 from ``resolve_data_dir(data_dir) / "cifar-100-python"`` (torchvision layout).

    Missing files are extracted from ``<root>/cifar-100-python.tar.gz``, which is downloaded
    first from ``urls`` (default ``URLS``; SHA-256 checked, atomic) when absent and ``download``
    is true. With ``verify`` a local archive and the files must match the official MD5 and
    SHA-256; either way the SHA-256 of each file is returned. Raises ``DataUnavailable`` with a
    user-facing message when the data is missing, corrupt or (with ``verify``) not official.
    """
    urls = URLS if urls is None else urls
    root = resolve_data_dir(data_dir)
    folder = root / FOLDER
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        archive = root / ARCHIVE
        if archive.is_file():
            if verify:
                _check(archive, file_digests(archive), ARCHIVE_MD5, ARCHIVE_SHA256,
                       "Delete it so that it is downloaded again.")
        elif not download:
            raise DataUnavailable(_missing_message(root, missing, urls, None))
        else:
            try:
                download_verified(urls, archive, ARCHIVE_SHA256, gunzip=False, timeout=60)
            except DataUnavailable as exc:
                raise DataUnavailable(_missing_message(root, missing, urls, str(exc))) from exc
        _extract(archive, folder, missing)

    parsed, sha256, verified = {}, {}, True
    for name in FILES:
        path = folder / name
        digests = file_digests(path)
        sha256[name] = digests[1]
        if verify:
            _check(path, digests, MD5[name], SHA256[name], "Delete it so that it is extracted or "
                   "downloaded again.")
        verified &= digests == (MD5[name], SHA256[name])
        parsed[name] = _parse(path, name)
    (train_images, train_labels), (test_images, test_labels) = parsed["train"], parsed["test"]
    return Cifar100(train_images, train_labels, test_images, test_labels, parsed["meta"], sha256, verified)
