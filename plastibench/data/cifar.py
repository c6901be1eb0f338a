"""The CIFAR-10 and CIFAR-100 python-pickle tarballs (torchvision layout): one loader for both.

Both tarballs hold one folder of Python pickles: batches with ``data`` (uint8 ``[N, 3072]``,
planar RGB, row-major) and integer labels, and a meta pickle with the label names. Only the
keys, the file names and the class count differ; :class:`CifarFormat` names them.
"""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plastibench.data.download import download_hint, download_verified
from plastibench.data.files import file_digests, read_pickle, require_official
from plastibench.data.paths import ENV_VAR, DataUnavailable, resolve_data_dir


@dataclass(frozen=True)
class CifarFormat:
    """What tells the two tarballs apart.

    title: name in messages; command: the ``plastibench data fetch`` argument; archive: the
    tarball's file name; folder: the folder inside it; train: training batches, concatenated in
    this order; test, meta: the test batch and the meta pickle; labels_key, names_key: the keys
    of the labels in a batch and of the names in the meta pickle; classes: the class count.
    """

    title: str
    command: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels_key: str
    names_key: str
    classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


@dataclass(frozen=True)
class Official:
    """Where the official tarball is downloaded from and the checksums of the official files."""

    urls: Sequence[str]
    archive_md5: str
    archive_sha256: str
    md5: Mapping[str, str]
    sha256: Mapping[str, str]


@dataclass(frozen=True, eq=False)
class CifarData:
    """A CIFAR dataset loaded from the official files.

    train_images, test_images: uint8 ``[N, 3, 32, 32]`` (RGB); train_labels, test_labels: int64
    ``[N]`` in ``0..classes-1``; label_names: the class names from the meta pickle.
    sha256: file name -> SHA-256 of the file loaded.
    verified: True when every file matched the official MD5 and SHA-256.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]
    sha256: dict[str, str]
    verified: bool


def _extract(fmt: CifarFormat, archive: Path, folder: Path, names: Sequence[str]) -> None:
    """Extract ``<fmt.folder>/<name>`` for each name into ``folder``, atomically.

    Only those exact member names are read, and only if they are regular files: no other
    member (absolute path, ``..``, link, device) is ever written anywhere.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = tar.getmember(f"{fmt.folder}/{name}")
                if not member.isfile():
                    raise DataUnavailable(f"{fmt.title} archive {archive}: member {member.name} is not a "
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
        raise DataUnavailable(f"{fmt.title} archive {archive} is unreadable or incomplete ({exc}). "
                              "Delete it so that it is downloaded again.") from exc


def _missing_message(fmt: CifarFormat, root: Path, missing: list[str], urls: Sequence[str],
                     failure: str | None) -> str:
    folder = root / fmt.folder
    return "\n".join([
        f"{fmt.title} not found: missing {', '.join(missing)} in {folder}.",
        download_hint(fmt.command, root, urls, failure),
        f"Or download {urls[0]} yourself and put {fmt.archive} in {root} (it is extracted there), "
        f"or extract it so that {folder} holds {', '.join(fmt.files)}.",
        f"To use another directory, pass --data-dir DIR or set {ENV_VAR}=DIR "
        f"(looked for in DIR/{fmt.folder}/).",
    ])


def _parse(fmt: CifarFormat, path: Path, name: str) -> Any:
    """Parsed content of one official file: (images, labels) for a batch, label names for meta."""
    try:
        d = read_pickle(path)
        if name == fmt.meta:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in d[fmt.names_key])
            if len(names) != fmt.classes:
                raise ValueError(f"expected {fmt.classes} {fmt.names_key}, got {len(names)}")
            return names
        data, labels = np.asarray(d["data"]), np.asarray(d[fmt.labels_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"expected 'data' uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or \
                (labels.size and not 0 <= labels.min() <= labels.max() <= fmt.classes - 1):
            raise ValueError(f"expected {len(data)} '{fmt.labels_key}' in 0..{fmt.classes - 1}")
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
    except (KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise DataUnavailable(f"Unreadable {fmt.title} file {path}: {exc}. Delete it so that it is "
                              "extracted or downloaded again.") from exc


def load_cifar(
    fmt: CifarFormat,
    official: Official,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    urls: Sequence[str] | None = None,
) -> CifarData:
    """Load a CIFAR dataset from ``resolve_data_dir(data_dir) / fmt.folder`` (torchvision layout).

    Missing files are extracted from ``<root>/<fmt.archive>``, which is downloaded first from
    ``urls`` (default ``official.urls``; SHA-256 checked, atomic) when absent and ``download`` is
    true. With ``verify`` a local archive and the files must match the official MD5 and SHA-256;
    either way the SHA-256 of each file is returned. Raises ``DataUnavailable`` with a
    user-facing message when the data is missing, corrupt or (with ``verify``) not official.
    """
    urls = official.urls if urls is None else urls
    root = resolve_data_dir(data_dir)
    folder = root / fmt.folder
    missing = [name for name in fmt.files if not (folder / name).is_file()]
    if missing:
        archive = root / fmt.archive
        if archive.is_file():
            if verify:
                require_official(fmt.title, archive, file_digests(archive), official.archive_md5,
                                 official.archive_sha256, "Delete it so that it is downloaded again.")
        elif not download:
            raise DataUnavailable(_missing_message(fmt, root, missing, urls, None))
        else:
            try:
                download_verified(urls, archive, official.archive_sha256, gunzip=False, timeout=60)
            except DataUnavailable as exc:
                raise DataUnavailable(_missing_message(fmt, root, missing, urls, str(exc))) from exc
        _extract(fmt, archive, folder, missing)

    parsed, sha256, verified = {}, {}, True
    for name in fmt.files:
        path = folder / name
        digests = file_digests(path)
        sha256[name] = digests[1]
        expected = (official.md5[name], official.sha256[name])
        if verify:
            require_official(fmt.title, path, digests, *expected,
                             "Delete it so that it is extracted or downloaded again.")
        verified &= digests == expected
        parsed[name] = _parse(fmt, path, name)
    train_images, train_labels = (np.concatenate(arrays) for arrays in zip(*(parsed[name] for name in fmt.train)))
    return CifarData(train_images, train_labels, *parsed[fmt.test], parsed[fmt.meta], sha256, verified)
