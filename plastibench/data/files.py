"""Reading data files safely: checksums in one pass, and unpickling that cannot run code."""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
from typing import Any

import numpy as np

from plastibench.data.paths import DataUnavailable

_CHUNK = 1 << 20


def file_digests(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(MD5, SHA-256) hex digests of a file, in one read."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def require_official(title: str, path: str | os.PathLike[str], digests: tuple[str, str], md5: str, sha256: str,
                     remedy: str) -> None:
    """Raise ``DataUnavailable`` unless ``digests`` (MD5, SHA-256 of ``path``) are ``md5`` and ``sha256``.

    The message names the dataset ``title``, the file, the digest that differs, then ``remedy``
    and the ``--no-verify`` way out.
    """
    for kind, actual, expected in (("MD5", digests[0], md5), ("SHA-256", digests[1], sha256)):
        if actual != expected:
            raise DataUnavailable(
                f"{title} file {path} does not contain the official data: its {kind} is {actual}, "
                f"expected {expected} (checksum mismatch). {remedy} To use it anyway, pass --no-verify; "
                "results are then marked unverified.")


def _pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a data pickle may name: what numpy arrays and scalars need."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x module names
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _DataUnpickler(pickle.Unpickler):
    allowed = _pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a data pickle may hold only numpy arrays, "
                "numbers, strings, lists and dicts") from None


def read_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a data file (Python 2 or 3) that may only contain numpy arrays and builtins.

    Strings from Python 2 pickles are decoded as latin-1; ``bytes`` dict keys become ``str``.
    Any other global (code) is refused with ``pickle.UnpicklingError``.
    """
    with open(path, "rb") as f:
        obj = _DataUnpickler(f, encoding="latin1").load()
    if isinstance(obj, dict):
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj
