"""EMNIST balanced from the official gzip.zip: parsing, verification, offline refusal, atomic download."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plastibench.cli_data import data_app
from plastibench.data import emnist
from plastibench.data.emnist import load_emnist
from plastibench.data.files import file_digests
from plastibench.data.paths import DataUnavailable

RNG = np.random.default_rng(1)
# Stored image 0 of the training set: a bar along stored row 3 (column 3 of the upright character).
BAR = np.zeros((28, 28), np.uint8)
BAR[3, 5:20] = 255
TRAIN = (np.concatenate([BAR[None], RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)]),
         np.uint8([0, 46, 3, 9, 10, 1]))
TEST = RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8), np.uint8([45, 7])
OTHER = np.full((6, 28, 28), 7, np.uint8), np.zeros(6, np.uint8)  # a byclass split that must not be read


def splits(train=TRAIN, test=TEST) -> dict:
    return {"byclass": {"train": OTHER, "test": OTHER}, "balanced": {"train": train, "test": test}}


@pytest.fixture
def official(monkeypatch, tmp_path, emnist_writer):
    """A file:// mirror holding a tiny gzip.zip, made the official URL and checksums; returns its path."""
    mirror = emnist_writer(tmp_path / "mirror", splits()) / "emnist" / "gzip.zip"
    md5, sha256 = file_digests(mirror)
    monkeypatch.setattr(emnist, "URLS", (mirror.as_uri(),))
    monkeypatch.setattr(emnist, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(emnist, "ARCHIVE_SHA256", sha256)
    return mirror


def test_balanced_split_read_as_stored(tmp_path, emnist_writer):
    archive = emnist_writer(tmp_path, splits()) / "emnist" / "gzip.zip"
    data = load_emnist(tmp_path, download=False, verify=False)
    assert data.train_images.shape == (6, 28, 28) and data.test_images.shape == (2, 28, 28)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_images, TRAIN[0])
    np.testing.assert_array_equal(data.test_images, TEST[0])
    assert data.train_labels.tolist() == [0, 46, 3, 9, 10, 1] and data.test_labels.tolist() == [45, 7]
    # As torchvision and UPGD read it: no transposition, so image 0 keeps its bar on row 3.
    with zipfile.ZipFile(archive) as z:
        raw = gzip.decompress(z.read("gzip/emnist-balanced-train-images-idx3-ubyte.gz"))
    assert raw[16 + 3 * 28 + 5] == 255 and data.train_images[0, 3, 5] == 255 and data.train_images[0, 5, 3] == 0
    assert data.sha256 == {"gzip.zip": file_digests(archive)[1]} and not data.verified


def test_default_fixture_covers_all_classes(tiny_emnist):
    data = load_emnist(tiny_emnist, download=False, verify=False)
    assert sorted(set(data.train_labels.tolist())) == list(range(47)) == sorted(set(data.test_labels.tolist()))
    assert len(data.train_images) == 94 and len(data.test_images) == 47


def test_verify_refuses_a_corrupted_archive(tmp_path, official):
    (tmp_path / "emnist").mkdir()
    path = tmp_path / "emnist" / "gzip.zip"
    path.write_bytes(official.read_bytes())
    assert load_emnist(tmp_path, download=False).verified
    path.write_bytes(official.read_bytes()[:-100])  # truncated: its central directory is gone
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        load_emnist(tmp_path, download=False)
    assert str(path) in str(info.value) and "--no-verify" in str(info.value)
    with pytest.raises(DataUnavailable, match="Unreadable EMNIST archive"):
        load_emnist(tmp_path, download=False, verify=False)


@pytest.mark.parametrize("train, message", [
    ((TRAIN[0], np.uint8([0, 47, 3, 9, 10, 1])), r"uint8 labels in 0\.\.46"),
    ((TRAIN[0], TRAIN[1][:5]), "expected 6 uint8 labels"),
    ((TRAIN[0][:, :27], TRAIN[1]), r"uint8 images \[N, 28, 28\]"),
])
def test_malformed_members(tmp_path, emnist_writer, train, message):
    emnist_writer(tmp_path, splits(train=train))
    with pytest.raises(DataUnavailable, match=message):
        load_emnist(tmp_path, download=False, verify=False)


def test_offline_refusal(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTIBENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataUnavailable) as info:
        load_emnist(download=False)
    message = str(info.value)
    assert f"no gzip.zip in {tmp_path / 'env' / 'emnist'}" in message
    assert all(url in message for url in emnist.URLS) and "plastibench data fetch emnist" in message
    assert "--data-dir DIR" in message and "PLASTIBENCH_DATA" in message

    unreachable = (tmp_path / "nowhere" / "gzip.zip").as_uri()
    with pytest.raises(DataUnavailable, match="Downloading failed") as info:
        load_emnist(tmp_path / "root", urls=[unreachable])
    assert unreachable in str(info.value) and "--data-dir" in str(info.value)
    assert not any((tmp_path / "root" / "emnist").iterdir())


def test_download_lands_verified_under_the_official_name(tmp_path, official):
    data = load_emnist(tmp_path / "root")
    assert data.verified and data.train_labels.tolist() == TRAIN[1].tolist()
    assert [p.name for p in (tmp_path / "root" / "emnist").iterdir()] == ["gzip.zip"]


def test_a_dropped_download_leaves_nothing(tmp_path, dropped_connection):
    with pytest.raises(DataUnavailable, match="Downloading failed(.|\n)*connection reset by peer"):
        load_emnist(tmp_path / "root")
    assert not any((tmp_path / "root" / "emnist").iterdir())


app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner()


def test_cli_fetch_and_listing(tmp_path, official):
    result = runner.invoke(app, ["data", "fetch", "emnist", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ready = f"EMNIST (balanced) ready in {tmp_path / 'emnist'}: 6 train and 2 test images, 47 classes."
    assert ready in result.stdout
    assert "official (MD5 and SHA-256 match)" in result.stdout and emnist.ARCHIVE_SHA256 in result.stdout
    listing = runner.invoke(app, ["data", "fetch", "--help"]).stdout
    assert all(name in listing for name in ("emnist", "cifar10", "cifar100"))
