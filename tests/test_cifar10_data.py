"""CIFAR-10: the five training batches in order, verification, offline refusal, atomic download (tiny tarballs).

What CIFAR-10 shares with CIFAR-100 (safe extraction, malformed pickles) is tested in test_cifar100_data.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plastibench.cli_data import data_app
from plastibench.data import cifar10
from plastibench.data.cifar10 import load_cifar10
from plastibench.data.files import file_digests
from plastibench.data.paths import DataUnavailable

RNG = np.random.default_rng(2)
TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]
# Batch i holds i + 1 images, labelled 2i and 2i + 1 alternately; the test batch 3 images.
BATCHES = {name: (RNG.integers(0, 256, (i + 1, 3072), dtype=np.uint8), [2 * i + k % 2 for k in range(i + 1)])
           for i, name in enumerate(TRAIN_NAMES)}
BATCHES["test_batch"] = RNG.integers(0, 256, (3, 3072), dtype=np.uint8), [9, 0, 5]
FILES = [*TRAIN_NAMES, "test_batch", "batches.meta"]


@pytest.fixture
def official(monkeypatch, tmp_path, cifar10_writer):
    """A tiny tarball behind a file:// URL, its checksums and those of its files made the official ones."""
    mirror = cifar10_writer(tmp_path / "mirror", BATCHES) / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar10, "URLS", (mirror.as_uri(),))
    md5, sha256 = file_digests(mirror)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(cifar10, "ARCHIVE_SHA256", sha256)
    load_cifar10(cifar10_writer(tmp_path / "scratch", BATCHES), download=False, verify=False)  # extracts
    for name in FILES:
        md5, sha256 = file_digests(tmp_path / "scratch" / "cifar-10-batches-py" / name)
        monkeypatch.setitem(cifar10.MD5, name, md5)
        monkeypatch.setitem(cifar10.SHA256, name, sha256)
    return mirror


def test_train_is_the_five_batches_in_order(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, BATCHES)
    data = load_cifar10(tmp_path, download=False, verify=False)
    assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (3, 3, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == data.test_labels.dtype == np.int64
    assert data.train_labels.tolist() == [0, 2, 3, 4, 5, 4, 6, 7, 6, 7, 8, 9, 8, 9, 8]
    np.testing.assert_array_equal(data.train_images.reshape(15, -1),
                                  np.concatenate([BATCHES[name][0] for name in TRAIN_NAMES]))
    # Planar RGB, row-major: image 1 of data_batch_5 (row 11), channel 1 (G), row 4, column 30.
    assert data.train_images[11, 1, 4, 30] == BATCHES["data_batch_5"][0][1, 1024 + 4 * 32 + 30]
    assert data.test_labels.tolist() == [9, 0, 5]
    assert data.label_names == tuple(f"class_{i}" for i in range(10))
    assert set(data.sha256) == set(FILES) and not data.verified
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()) == sorted(FILES)


def test_default_fixture_is_balanced(tiny_cifar10):
    data = load_cifar10(tiny_cifar10, download=False, verify=False)
    assert np.bincount(data.train_labels).tolist() == [10] * 10
    assert np.bincount(data.test_labels).tolist() == [1] * 10


def test_label_out_of_range_is_refused(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, {**BATCHES, "data_batch_3": (BATCHES["data_batch_3"][0], [1, 10, 2])})
    with pytest.raises(DataUnavailable, match=r"'labels' in 0\.\.9") as info:
        load_cifar10(tmp_path, download=False, verify=False)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_3") in str(info.value)


def test_verify_refuses_a_corrupted_file(tmp_path, official):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cifar-10-python.tar.gz").write_bytes(official.read_bytes())
    assert load_cifar10(tmp_path / "root", download=False).verified
    path = tmp_path / "root" / "cifar-10-batches-py" / "data_batch_4"
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        load_cifar10(tmp_path / "root", download=False)
    assert str(path) in str(info.value) and "--no-verify" in str(info.value)


def test_verify_refuses_a_foreign_tarball(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path)
    with pytest.raises(DataUnavailable, match="cifar-10-python.tar.gz does not contain the official data"):
        load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_offline_refusal(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTIBENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataUnavailable) as info:
        load_cifar10(download=False)
    message = str(info.value)
    assert f"missing {', '.join(FILES)} in {tmp_path / 'env' / 'cifar-10-batches-py'}" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "plastibench data fetch cifar10" in message
    assert "--data-dir DIR" in message and "PLASTIBENCH_DATA" in message


def test_download_lands_verified_under_the_official_name(tmp_path, official):
    data = load_cifar10(tmp_path / "root")
    assert data.verified and data.sha256 == cifar10.SHA256
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [cifar10.FORMAT.folder, cifar10.FORMAT.archive]


def test_a_dropped_download_leaves_nothing(tmp_path, dropped_connection):
    with pytest.raises(DataUnavailable, match="Downloading failed(.|\n)*connection reset by peer"):
        load_cifar10(tmp_path / "root")
    assert not any((tmp_path / "root").iterdir())


app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner()


def test_cli_fetch(tmp_path, official):
    result = runner.invoke(app, ["data", "fetch", "cifar10", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"CIFAR-10 ready in {tmp_path / 'cifar-10-batches-py'}: 15 train and 3 test images, 10 classes." \
        in result.stdout
    assert "official (MD5 and SHA-256 match)" in result.stdout and cifar10.SHA256["data_batch_1"] in result.stdout
