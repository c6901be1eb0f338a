"""MNIST IDX parsing, loading, verification and download, on tiny generated files only."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from plastibench.data import download, mnist
from plastibench.data.mnist import MnistSplit, load_mnist, read_idx, write_idx
from plastibench.data.paths import DataUnavailable, default_cache_dir, resolve_data_dir

NAMES = [name for pair in mnist.SPLITS.values() for name in pair]


def tiny_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 9, 4], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2, 1], dtype=np.uint8),
    }


def write_tiny(directory: Path, *, gz: bool) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = tiny_arrays()
    for name, array in arrays.items():
        write_idx(directory / (name + ".gz" if gz else name), array)
    return arrays


@pytest.fixture
def tiny_checksums(monkeypatch, tmp_path) -> None:
    """Make the official checksum table match the tiny files."""
    scratch = tmp_path / "scratch"
    for name in write_tiny(scratch, gz=False):
        monkeypatch.setitem(mnist.SHA256, name, download.sha256_file(scratch / name))


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", "f8"])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_official_format(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
    assert len(raw) == 16 + 2 * 28 * 28


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(6, dtype=np.uint8))
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), np.arange(6))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "unsupported IDX type byte 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "payload is 3 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "payload is 3 bytes"),
    ],
)
def test_malformed_idx_raises_valueerror_naming_file(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_raises_valueerror(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")[:-10])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_finds_plain_and_gz_files(tmp_path, gz):
    arrays = write_tiny(tmp_path / "mnist", gz=gz)
    for split, (images_name, labels_name) in mnist.SPLITS.items():
        data = load_mnist(tmp_path, split, download=False, verify=False)
        assert isinstance(data, MnistSplit) and not data.verified
        assert set(data.sha256) == {images_name, labels_name}  # recorded even when unverified
        np.testing.assert_array_equal(data.images, arrays[images_name])
        np.testing.assert_array_equal(data.labels, arrays[labels_name])
        assert data.images.dtype == data.labels.dtype == np.uint8


def test_verify_rejects_non_official_files(tmp_path):
    write_tiny(tmp_path / "mnist", gz=True)
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        load_mnist(tmp_path, download=False)
    assert "--no-verify" in str(info.value) and "unverified" in str(info.value)


def test_verify_accepts_matching_files(tmp_path, tiny_checksums):
    write_tiny(tmp_path / "mnist", gz=True)
    data = load_mnist(tmp_path, download=False)
    assert data.verified
    assert data.sha256 == {name: mnist.SHA256[name] for name in mnist.SPLITS["train"]}


def test_changed_file_is_caught(tmp_path, tiny_checksums):
    write_tiny(tmp_path / "mnist", gz=False)
    load_mnist(tmp_path, download=False)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    write_idx(path, np.array([1, 1, 1, 1, 1], np.uint8))
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        load_mnist(tmp_path, download=False)


def test_count_mismatch_is_reported(tmp_path):
    write_tiny(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataUnavailable, match="5 images but .* 4 labels"):
        load_mnist(tmp_path, download=False, verify=False)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataUnavailable) as info:
        load_mnist(tmp_path, "test", download=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "mnist") in message
    assert "PLASTIBENCH_DATA" in message and "--data-dir" in message
    assert ".gz" in message


def make_mirror(directory: Path, *, corrupt: bool = False) -> str:
    """A file:// mirror holding the tiny files as NAME.gz (optionally with wrong content)."""
    arrays = write_tiny(directory, gz=True)
    if corrupt:
        for name, array in arrays.items():
            write_idx(directory / f"{name}.gz", array[::-1].copy() + 1)
    return directory.as_uri() + "/"


def test_download_from_file_mirror(tmp_path, tiny_checksums):
    mirror = make_mirror(tmp_path / "mirror")
    data = load_mnist(tmp_path / "root", mirrors=[mirror])
    assert data.verified and len(data.labels) == 5
    files = sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir())
    assert not [name for name in files if ".part" in name]
    for name in mnist.SPLITS["train"]:
        assert name in files  # saved decompressed, under the official name
        assert (tmp_path / "root" / "mnist" / name).read_bytes()[:2] == b"\x00\x00"


def test_download_falls_back_past_missing_and_corrupt_mirrors(tmp_path, tiny_checksums):
    empty = (tmp_path / "empty").as_uri() + "/"
    corrupt = make_mirror(tmp_path / "corrupt", corrupt=True)
    good = make_mirror(tmp_path / "good")
    data = load_mnist(tmp_path / "root", "test", mirrors=[empty, corrupt, good])
    np.testing.assert_array_equal(data.labels, [7, 2, 1])
    assert not list((tmp_path / "root" / "mnist").glob("*.part*"))


def test_download_failure_lists_every_mirror(tmp_path, tiny_checksums):
    empty = (tmp_path / "empty").as_uri() + "/"
    corrupt = make_mirror(tmp_path / "corrupt", corrupt=True)
    with pytest.raises(DataUnavailable) as info:
        load_mnist(tmp_path / "root", mirrors=[empty, corrupt])
    message = str(info.value)
    assert f"{empty}train-images-idx3-ubyte.gz" in message
    assert f"{corrupt}train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert "PLASTIBENCH_DATA" in message
    assert not any((tmp_path / "root" / "mnist").iterdir())


def test_download_verified_is_atomic(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"hello")
    dest = tmp_path / "out" / "file"
    good = hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        download.download_verified([source.as_uri()], dest, "0" * 64, gunzip=False)
    assert list(dest.parent.iterdir()) == []
    assert download.download_verified([source.as_uri()], dest, good, gunzip=False) == dest
    assert dest.read_bytes() == b"hello" and list(dest.parent.iterdir()) == [dest]


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PLASTIBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.setenv("PLASTIBENCH_DATA", "")
    assert resolve_data_dir(None) == default_cache_dir() == tmp_path / "xdg" / "plastibench"
    monkeypatch.delenv("PLASTIBENCH_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("~/d") == tmp_path / "home" / "d"
    assert not (tmp_path / "xdg").exists()


def test_default_cache_dir_per_platform(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_cache_dir("linux") == home / ".cache" / "plastibench"
    assert default_cache_dir("darwin") == home / "Library" / "Caches" / "plastibench"
    assert default_cache_dir("win32") == tmp_path / "local" / "plastibench"
