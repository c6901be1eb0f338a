"""Minimal stdlib downloader: mirrors tried in order, SHA-256 checked, atomic rename."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from plastibench.data.paths import DataUnavailable

_CHUNK = 1 << 20


def sha256_stream(stream: BinaryIO) -> str:
    """Hex SHA-256 of everything left in a binary stream."""
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (as stored, no decompression)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def _fetch(url: str, tmp: Path, *, gunzip: bool, timeout: float) -> str:
    """Stream ``url`` into the new file ``tmp``; return the SHA-256 of the bytes written."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "xb") as out:
        source = gzip.GzipFile(fileobj=response) if gunzip else response
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def download_verified(
    urls: Sequence[str], dest: Path, sha256: str, *, gunzip: bool, timeout: float = 30
) -> Path:
    """Download the first URL whose content has SHA-256 ``sha256`` to ``dest``.

    With ``gunzip`` the response is decompressed on the fly and the checksum applies to
    the decompressed bytes. Data goes to ``<dest>.part-<random>`` and is renamed onto
    ``dest`` only once verified, so ``dest`` never holds a partial or corrupt file.
    Raises ``DataUnavailable`` listing every URL's failure if none succeeds.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        tmp = dest.with_name(f"{dest.name}.part-{secrets.token_hex(4)}")
        try:
            actual = _fetch(url, tmp, gunzip=gunzip, timeout=timeout)
            if actual == sha256.lower():
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: checksum mismatch (SHA-256 {actual}, expected {sha256})")
        except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n".join(f"  - {failure}" for failure in failures) or "  (no URLs given)"
    raise DataUnavailable(f"Could not download {dest.name} into {dest.parent}. Tried:\n{tried}")


def download_hint(command: str, root: Path, urls: Sequence[str], failure: str | None) -> str:
    """The part of a missing-data message about downloading: disabled (``failure`` None) or failed."""
    if failure is None:
        return f"Downloading is disabled; allow it (plastibench data fetch {command}) to fetch {', '.join(urls)}."
    return (f"Downloading failed:\n{failure}\nWhen the network is back, fetch it with: "
            f"plastibench data fetch {command} --data-dir {root}")
