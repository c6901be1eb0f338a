"""CIFAR-100 download, safe extraction, verification and parsing, on a tiny generated tarball."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plastibench.cli_data import data_app
from plastibench.data import cifar100
from plastibench.data.cifar import CifarData
from plastibench.data.cifar100 import load_cifar100
from plastibench.data.files import file_digests, read_pickle
from plastibench.data.paths import DataUnavailable

RNG = np.random.default_rng(0)
TRAIN = RNG.integers(0, 256, (20, 3072), dtype=np.uint8), [i * 5 for i in range(20)]
TEST = RNG.integers(0, 256, (10, 3072), dtype=np.uint8), [99 - i for i in range(10)]
NAMES = [f"class_{i}" for i in range(100)]


def pickled(obj, *, bytes_keys: bool = False) -> bytes:
    """A pickle like the official ones (protocol 2), optionally with bytes keys and strings."""
    if bytes_keys:
        obj = {k.encode(): [v.encode() for v in val] if k.endswith("names") else val for k, val in obj.items()}
    return pickle.dumps(obj, protocol=2)


def contents(**changes) -> dict[str, bytes]:
    files = {
        "train": pickled({"batch_label": "training batch 1 of 1", "data": TRAIN[0], "fine_labels": TRAIN[1],
                          "coarse_labels": [0] * 20, "filenames": ["a.png"] * 20}),
        "test": pickled({"data": TEST[0], "fine_labels": TEST[1], "coarse_labels": [0] * 10}),
        "meta": pickled({"fine_label_names": NAMES, "coarse_label_names": ["c"] * 20}, bytes_keys=True),
    }
    return {**files, **changes}


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def make_tarball(path: Path, files: dict[str, bytes] | None = None, extra=()) -> Path:
    """A cifar-100-python.tar.gz with the official member names (plus any ``extra`` members)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cifar-100-python", type=tarfile.DIRTYPE)
        for name, data in (files or contents()).items():
            add(tar, f"cifar-100-python/{name}", data)
        add(tar, "cifar-100-python/file.txt~", b"x")
        for member in extra:
            add(tar, **member)
    return path


def write_files(root: Path, files: dict[str, bytes] | None = None) -> Path:
    (root / "cifar-100-python").mkdir(parents=True)
    for name, data in (files or contents()).items():
        (root / "cifar-100-python" / name).write_bytes(data)
    return root


@pytest.fixture
def mirror(tmp_path) -> Path:
    return make_tarball(tmp_path / "mirror" / "cifar-100-python.tar.gz")


@pytest.fixture
def official(monkeypatch, mirror):
    """Make the official URL and checksum tables those of the tiny tarball."""
    monkeypatch.setattr(cifar100, "URLS", (mirror.as_uri(),))
    md5, sha256 = file_digests(mirror)
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(cifar100, "ARCHIVE_SHA256", sha256)
    for name, data in contents().items():
        (mirror.parent / name).write_bytes(data)
        md5, sha256 = file_digests(mirror.parent / name)
        monkeypatch.setitem(cifar100.MD5, name, md5)
        monkeypatch.setitem(cifar100.SHA256, name, sha256)


def check_tiny(data: CifarData) -> None:
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10, 3, 32, 32)
    assert data.train_labels.dtype == np.int64 and data.train_labels.tolist() == TRAIN[1]
    assert data.test_labels.tolist() == TEST[1]
    # Planar RGB, row-major: image 3, channel 2 (B), row 5, column 7.
    assert data.train_images[3, 2, 5, 7] == TRAIN[0][3, 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(data.test_images.reshape(10, -1), TEST[0])
    assert data.label_names == tuple(NAMES)


def test_download_extract_and_load(tmp_path, official):
    data = load_cifar100(tmp_path / "root")
    check_tiny(data)
    assert data.verified and data.sha256 == cifar100.SHA256
    root = tmp_path / "root"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]
    assert sorted(p.name for p in (root / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert load_cifar100(root, download=False).verified  # second time: straight from disk


def test_download_checksum_failure_leaves_nothing(tmp_path, official, monkeypatch):
    monkeypatch.setattr(cifar100, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        load_cifar100(tmp_path / "root")
    assert cifar100.URLS[0] in str(info.value) and "--data-dir" in str(info.value)
    assert not any((tmp_path / "root").iterdir())


def test_offline_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTIBENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataUnavailable) as info:
        load_cifar100(download=False)
    message = str(info.value)
    assert "missing train, test, meta" in message and str(tmp_path / "env" / "cifar-100-python") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "--data-dir DIR" in message and "PLASTIBENCH_DATA" in message

    unreachable = (tmp_path / "nowhere" / "cifar-100-python.tar.gz").as_uri()
    with pytest.raises(DataUnavailable, match="Downloading failed") as info:
        load_cifar100(tmp_path / "root", urls=[unreachable])
    assert unreachable in str(info.value)
    assert not any((tmp_path / "root").iterdir())


def test_local_files_checked_unless_no_verify(tmp_path):
    write_files(tmp_path)
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        load_cifar100(tmp_path, download=False)
    assert "cifar-100-python/train" in str(info.value) and "--no-verify" in str(info.value)
    data = load_cifar100(tmp_path, download=False, verify=False)
    check_tiny(data)
    assert not data.verified and data.sha256["train"] == file_digests(tmp_path / "cifar-100-python" / "train")[1]


def test_local_tarball_is_used_offline(tmp_path, official, mirror):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cifar-100-python.tar.gz").write_bytes(mirror.read_bytes())
    check_tiny(load_cifar100(tmp_path / "root", download=False))


def test_local_tarball_checksum_mismatch(tmp_path, official):
    make_tarball(tmp_path / "cifar-100-python.tar.gz", contents(test=contents()["train"]))
    with pytest.raises(DataUnavailable, match="cifar-100-python.tar.gz does not contain the official"):
        load_cifar100(tmp_path, download=False)
    assert not (tmp_path / "cifar-100-python").exists()


def test_tar_members_outside_the_folder_are_never_written(tmp_path):
    extra = [{"name": "../evil"}, {"name": str(tmp_path / "abs")},
             {"name": "cifar-100-python/../../evil2"}]
    make_tarball(tmp_path / "root" / "cifar-100-python.tar.gz", extra=extra)
    check_tiny(load_cifar100(tmp_path / "root", download=False, verify=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert sorted(p.name for p in (tmp_path / "root" / "cifar-100-python").iterdir()) == ["meta", "test", "train"]


@pytest.mark.parametrize("member", [
    {"name": "cifar-100-python/train", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
    {"name": "cifar-100-python/train", "type": tarfile.LNKTYPE, "linkname": "cifar-100-python/meta"},
])
def test_linked_members_are_refused(tmp_path, member):
    files = contents()
    del files["train"]
    make_tarball(tmp_path / "cifar-100-python.tar.gz", files, extra=[member])
    with pytest.raises(DataUnavailable, match="not a regular file"):
        load_cifar100(tmp_path, download=False, verify=False)
    assert not (tmp_path / "cifar-100-python" / "train").exists()


def test_incomplete_or_corrupt_tarball(tmp_path):
    files = contents()
    del files["meta"]
    make_tarball(tmp_path / "a" / "cifar-100-python.tar.gz", files)
    with pytest.raises(DataUnavailable, match="unreadable or incomplete"):
        load_cifar100(tmp_path / "a", download=False, verify=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(DataUnavailable, match="unreadable or incomplete"):
        load_cifar100(tmp_path / "b", download=False, verify=False)
    assert [p.name for p in (tmp_path / "b" / "cifar-100-python").iterdir()] == []


@pytest.mark.parametrize("name, content, message", [
    ("train", pickled({"data": TRAIN[0], "fine_labels": [100] * 20}), r"'fine_labels' in 0\.\.99"),
    ("train", pickled({"data": TRAIN[0][:, :100], "fine_labels": TRAIN[1]}), r"uint8 \[N, 3072\]"),
    ("test", pickled({"data": TEST[0]}), "fine_labels"),
    ("meta", pickled({"fine_label_names": NAMES[:10]}), "expected 100 fine_label_names"),
    ("test", b"garbage", "Unreadable CIFAR-100 file"),
])
def test_malformed_files(tmp_path, name, content, message):
    write_files(tmp_path, contents(**{name: content}))
    with pytest.raises(DataUnavailable, match=message) as info:
        load_cifar100(tmp_path, download=False, verify=False)
    assert str(tmp_path / "cifar-100-python" / name) in str(info.value)


def test_read_pickle_accepts_old_numpy_and_bytes_keys_refuses_code(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = pickle.dumps({b"data": array, "mean": np.float64(0.5)}, protocol=2)
    (tmp_path / "old").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    for protocol in (0, 5):
        (tmp_path / f"p{protocol}").write_bytes(pickle.dumps({"data": array}, protocol=protocol))
    for name in ("old", "p0", "p5"):
        np.testing.assert_array_equal(read_pickle(tmp_path / name)["data"], array)
    assert read_pickle(tmp_path / "old")["mean"] == 0.5
    (tmp_path / "evil").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        read_pickle(tmp_path / "evil")


app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner()


def test_cli_fetch(tmp_path, official):
    result = runner.invoke(app, ["data", "fetch", "cifar100", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"CIFAR-100 ready in {tmp_path / 'cifar-100-python'}: 20 train and 10 test images" in result.stdout
    assert "official (MD5 and SHA-256 match)" in result.stdout and cifar100.SHA256["train"] in result.stdout


def test_cli_fetch_offline_and_no_verify(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar100, "URLS", ((tmp_path / "nowhere.tar.gz").as_uri(),))
    result = runner.invoke(app, ["data", "fetch", "cifar100", "--data-dir", str(tmp_path / "root")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: CIFAR-100 not found" in result.stderr and "nowhere.tar.gz" in result.stderr
    assert "--data-dir DIR" in result.stderr

    write_files(tmp_path / "root")
    result = runner.invoke(app, ["data", "fetch", "cifar100", "--data-dir", str(tmp_path / "root")])
    assert result.exit_code == 1 and "checksum mismatch" in result.stderr and "--no-verify" in result.stderr
    result = runner.invoke(app, ["data", "fetch", "cifar100", "--data-dir", str(tmp_path / "root"), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "NOT the official files (unverified)" in result.stdout
