"""MNIST in its official on-disk format (IDX files, plain or gzipped)."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plastibench.data.download import download_verified
from plastibench.data.paths import ENV_VAR, DataUnavailable, resolve_data_dir

# IDX type byte -> big-endian element dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.str[1:]: code for code, dtype in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"

SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the decompressed official files (sizes 47,040,016 / 60,008 / 7,840,016 /
# 10,008 bytes), so re-compressed copies of the official data are accepted too.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Published SHA-256 of the official .gz archives (documentation only; not checked).
ARCHIVE_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
# Tried in order; a file's URL is mirror + name + ".gz".
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _read_content(path: str | os.PathLike[str]) -> bytes:
    """File content, gunzipped if it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc


def parse_idx(content: bytes, source: str | os.PathLike[str]) -> np.ndarray:
    """Parse IDX bytes into a native-endian array; errors name ``source``."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file (magic bytes {content[:4].hex(' ')}, "
            "expected 00 00 <type> <rank>)"
        )
    code, rank = content[2], content[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{source}: unsupported IDX type byte 0x{code:02x}")
    header = 4 + 4 * rank
    if len(content) < header:
        raise ValueError(f"{source}: truncated IDX header (rank {rank} needs {header} bytes)")
    dims = struct.unpack(f">{rank}I", content[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected, actual = count * dtype.itemsize, len(content) - header
    if actual != expected:
        raise ValueError(
            f"{source}: IDX payload is {actual} bytes but dims {list(dims)} of {dtype.name} "
            f"need {expected} (file truncated or corrupt)"
        )
    data = np.frombuffer(content, dtype, count=count, offset=header)
    return data.astype(dtype.newbyteorder("=")).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzipped, detected by magic bytes) into a numpy array."""
    return parse_idx(_read_content(path), path)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.str[1:])
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


@dataclass(frozen=True, eq=False)
class MnistSplit:
    """One MNIST split loaded from the official files.

    images: uint8 ``[N, 28, 28]``; labels: uint8 ``[N]`` in 0..9.
    sha256: official file name -> SHA-256 of its decompressed content, for each file
        checked against the official table (empty when loaded with ``verify=False``).
    verified: True when both files matched the official checksums.
    """

    images: np.ndarray
    labels: np.ndarray
    sha256: dict[str, str]
    verified: bool


def _find(root: Path, name: str) -> Path | None:
    """The file ``name`` or ``name.gz`` in ``root``, if present (plain preferred)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _verify(path: Path, name: str, actual: str) -> None:
    """Refuse content whose SHA-256 is not the official one."""
    expected = SHA256[name]
    if actual != expected:
        raise DataUnavailable(
            f"MNIST file {path} does not contain the official data: its decompressed content "
            f"has SHA-256 {actual}, expected {expected} (checksum mismatch). Replace it with "
            "the official file (plain or .gz), or delete it so that it is downloaded again. "
            "To use it anyway, pass --no-verify; results are then marked unverified."
        )


def _missing_message(
    split: str, root: Path, missing: list[str], mirrors: Sequence[str], failure: str | None
) -> str:
    names = ", ".join(name for pair in SPLITS.values() for name in pair)
    lines = [
        f"MNIST {split} data not found: missing {', '.join(missing)} in {root}.",
        f"Place the official MNIST files there under their official names ({names}), "
        "plain or gzipped (.gz).",
    ]
    if failure is None:
        lines.append("Downloading is disabled; allow it to fetch the files automatically from: "
                     + ", ".join(mirrors))
    else:
        lines.append(f"Downloading failed (mirrors: {', '.join(mirrors)}):\n{failure}")
    lines.append(
        f"To use another directory, pass --data-dir DIR or set {ENV_VAR}=DIR "
        "(the files are looked for in DIR/mnist/)."
    )
    return "\n".join(lines)


def _check_split(images: np.ndarray, labels: np.ndarray, paths: Sequence[Path]) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: expected uint8 images [N, 28, 28], "
                         f"got {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1 or (labels.size and labels.max() > 9):
        raise ValueError(f"{paths[1]}: expected uint8 labels [N] in 0..9, "
                         f"got {labels.dtype} {list(labels.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} "
                         f"has {len(labels)} labels")


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    download: bool = True,
    verify: bool = True,
    mirrors: Sequence[str] = MIRRORS,
) -> MnistSplit:
    """Load an MNIST split ("train" or "test") from ``resolve_data_dir(data_dir) / "mnist"``.

    Each official file may be present plain or as ``.gz``. Missing files are downloaded
    (decompressed, under the official name) when ``download`` is true. With ``verify``
    the decompressed content must match the official SHA-256; either way the SHA-256 of what
    was loaded is returned, for the run's record. Raises ``DataUnavailable``
    with a user-facing message when files are missing, corrupt or not official.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected one of {sorted(SPLITS)}")
    root = resolve_data_dir(data_dir) / "mnist"
    paths = {name: _find(root, name) for name in SPLITS[split]}
    failure = None
    if download:
        for name in [n for n, p in paths.items() if p is None]:
            urls = [f"{mirror}{name}.gz" for mirror in mirrors]
            try:
                paths[name] = download_verified(urls, root / name, SHA256[name], gunzip=True)
            except DataUnavailable as exc:
                failure = str(exc)
                break
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise DataUnavailable(_missing_message(split, root, missing, mirrors, failure))

    found = list(paths.values())
    digests, arrays = {}, []
    try:
        for name, path in paths.items():
            content = _read_content(path)
            digests[name] = hashlib.sha256(content).hexdigest()
            if verify:
                _verify(path, name, digests[name])
            arrays.append(parse_idx(content, path))
        _check_split(*arrays, found)
    except ValueError as exc:
        raise DataUnavailable(
            f"Unreadable MNIST data: {exc}. Replace the file with the official one "
            f"(plain or .gz) or delete it so that it is downloaded again."
        ) from exc
    return MnistSplit(images=arrays[0], labels=arrays[1], sha256=digests, verified=verify)
