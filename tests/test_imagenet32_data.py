"""Imagenet32 import (official batches, reference archive), the store and `plastibench data import`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plastibench.cli_data import data_app
from plastibench.data import imagenet32
from plastibench.data.download import sha256_file
from plastibench.data.files import file_digests
from plastibench.data.imagenet32 import (import_imagenet32, import_reference_archive,
                                         load_imagenet32_store)
from plastibench.data.paths import DataUnavailable

# Official labels 1..1000. Batch 1: label 1 x700 (its first 700), label 2 x300. Batch 10: label 1
# x100 (never taken), label 2 x400, label 3 x700, label 1000 x500 (too few: skipped).
COUNTS = {"train_data_batch_1": {1: 700, 2: 300}, "train_data_batch_10": {1: 100, 2: 400, 3: 700, 1000: 500}}


def make_batches() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    batches = {}
    for name, counts in COUNTS.items():
        labels = np.repeat(list(counts), list(counts.values()))
        rng.shuffle(labels)
        batches[name] = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels
    return batches


BATCHES = make_batches()


def write_official(src: Path, names=tuple(COUNTS), *, npz: bool = False) -> Path:
    """Batch files in the official format: dict(data uint8 [N, 3072], labels list 1..1000, mean)."""
    src.mkdir(parents=True, exist_ok=True)
    for name in names:
        data, labels = BATCHES[name]
        if npz:
            np.savez(src / f"{name}.npz", data=data, labels=labels, mean=data.mean(0))
        else:
            with open(src / name, "wb") as f:
                pickle.dump({"data": data, "labels": labels.tolist(), "mean": data.mean(0)}, f, protocol=2)
    return src


def empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def expected(class_id: int, names=tuple(COUNTS)) -> np.ndarray:
    """The documented rule: first 700 images of the class, batch files in order, file order within."""
    rows = [data[labels == class_id + 1] for data, labels in (BATCHES[n] for n in names)]
    return np.concatenate(rows)[:700].reshape(-1, 3, 32, 32)


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    src = write_official(tmp_path_factory.mktemp("official"))
    (src / "val_data").write_bytes(b"not read")
    return src


@pytest.fixture
def known_md5(monkeypatch, official):
    """Make the MD5 table match the tiny batch files."""
    for name in COUNTS:
        monkeypatch.setitem(imagenet32.MD5, name, file_digests(official / name)[0])


def test_import_takes_first_700_in_batch_order(official, known_md5, tmp_path):
    report = import_imagenet32(official, tmp_path)
    store = tmp_path / "imagenet32"
    assert report.store == store and report.classes == (0, 1, 2) and report.n_images == 2100
    assert report.skipped == {999: 500} and report.unverified == () and report.ignored == ("val_data",)
    assert sorted(p.name for p in (store / "classes").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    for c in (0, 1, 2):
        array = np.load(store / "classes" / f"{c}.npy")
        assert array.dtype == np.uint8 and array.shape == (700, 3, 32, 32)
        np.testing.assert_array_equal(array, expected(c))
    # Planar RGB: channel 1 (G) of the first image of class 2 is bytes 1024..2047 of its row.
    data, labels = BATCHES["train_data_batch_10"]
    first = data[np.flatnonzero(labels == 3)[0]]
    np.testing.assert_array_equal(np.load(store / "classes" / "2.npy")[0, 1], first[1024:2048].reshape(32, 32))
    assert not [p for p in tmp_path.iterdir() if p.name != "imagenet32"]  # no staging left over


def test_manifest_records_sources_selection_and_checksums(official, known_md5, tmp_path):
    import_imagenet32(official, tmp_path)
    store = tmp_path / "imagenet32"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["source"] == "Imagenet32 official batches"
    assert manifest["n_classes"] == 3 and manifest["dtype"] == "uint8"
    assert manifest["value_range"] == [0, 255] and "0-255" in manifest["pixel_scale"]
    assert (manifest["images_per_class"], manifest["train_images_per_class"],
            manifest["test_images_per_class"]) == (700, 600, 100)
    assert "first 700" in manifest["selection_rule"] and "val_data is never used" in manifest["selection_rule"]
    for name in COUNTS:
        md5, sha256 = file_digests(official / name)
        assert manifest["source_files"][name] == {
            "bytes": (official / name).stat().st_size, "md5": md5, "sha256": sha256,
            "verified": True, "images": len(BATCHES[name][1])}
    assert manifest["ignored_files"] == ["val_data"] and manifest["skipped_classes"] == {"999": 500}
    assert manifest["classes"]["0"]["taken"] == {"train_data_batch_1": 700}
    assert manifest["classes"]["1"]["taken"] == {"train_data_batch_1": 300, "train_data_batch_10": 400}
    for c, entry in manifest["classes"].items():
        assert entry["file"] == f"classes/{c}.npy" and entry["sha256"] == sha256_file(store / entry["file"])


def test_store_loads_checks_and_reports_missing_classes(official, known_md5, tmp_path):
    import_imagenet32(official, tmp_path)
    store = load_imagenet32_store(tmp_path)
    assert store.classes == (0, 1, 2) and store.manifest["n_classes"] == 3 and store.class_order is None
    np.testing.assert_array_equal(store.images(1), expected(1))
    with pytest.raises(DataUnavailable, match="Class 999 is not in"):
        store.images(999)
    path = tmp_path / "imagenet32" / "classes" / "1.npy"
    np.save(path, np.zeros((700, 3, 32, 32), np.uint8))
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        store.images(1)
    assert "--no-verify" in str(info.value)
    assert not load_imagenet32_store(tmp_path, verify=False).images(1).any()


def test_npz_variant_gives_the_same_store_unverified(official, known_md5, tmp_path):
    import_imagenet32(official, tmp_path / "pickles")
    src = write_official(tmp_path / "npz", npz=True)
    report = import_imagenet32(src, tmp_path / "npz-store")
    assert report.classes == (0, 1, 2)
    assert report.unverified == ("train_data_batch_1.npz", "train_data_batch_10.npz")
    a, b = (json.loads((tmp_path / d / "imagenet32" / "manifest.json").read_text())["classes"]
            for d in ("pickles", "npz-store"))
    assert {c: e["sha256"] for c, e in a.items()} == {c: e["sha256"] for c, e in b.items()}


def test_partial_import_and_reimport_replace_the_store(official, known_md5, tmp_path):
    import_imagenet32(official, tmp_path)
    src = write_official(tmp_path / "only-batch-1", names=["train_data_batch_1"])
    report = import_imagenet32(src, tmp_path)
    assert report.classes == (0,) and report.skipped == {1: 300}
    manifest = load_imagenet32_store(tmp_path).manifest
    assert manifest["n_classes"] == 1 and list(manifest["source_files"]) == ["train_data_batch_1"]
    assert [p.name for p in (tmp_path / "imagenet32" / "classes").iterdir()] == ["0.npy"]
    np.testing.assert_array_equal(load_imagenet32_store(tmp_path).images(0),
                                  expected(0, ["train_data_batch_1"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet32", "only-batch-1"]


def test_nothing_complete_is_refused_and_keeps_the_old_store(official, known_md5, tmp_path):
    import_imagenet32(official, tmp_path)
    data, labels = BATCHES["train_data_batch_10"]
    src = tmp_path / "few"
    src.mkdir()
    np.savez(src / "train_data_batch_3.npz", data=data[:50], labels=labels[:50])
    with pytest.raises(DataUnavailable, match="No class has 700 images"):
        import_imagenet32(src, tmp_path)
    assert load_imagenet32_store(tmp_path).classes == (0, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few", "imagenet32"]


def test_md5_mismatch_is_refused_unless_no_verify(official, tmp_path):
    with pytest.raises(DataUnavailable, match="checksum mismatch") as info:
        import_imagenet32(official, tmp_path)
    assert "train_data_batch_1" in str(info.value) and "--no-verify" in str(info.value)
    assert empty(tmp_path)
    report = import_imagenet32(official, tmp_path, verify=False)
    assert report.classes == (0, 1, 2) and report.unverified == tuple(COUNTS)
    sources = load_imagenet32_store(tmp_path).manifest["source_files"]
    assert not any(s["verified"] for s in sources.values())


@pytest.mark.parametrize("content, message", [
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, r"labels' in 1\.\.1000"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1001, 1]}, r"labels' in 1\.\.1000"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 1]}, "expected 'data' uint8"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, "expected 2 integer"),
    ({"labels": [1]}, "'data'"),
])
def test_malformed_batches_are_refused(tmp_path, content, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train_data_batch_2").write_bytes(pickle.dumps(content))
    with pytest.raises(DataUnavailable, match=message) as info:
        import_imagenet32(tmp_path / "src", tmp_path / "data", verify=False)
    assert "train_data_batch_2" in str(info.value)
    assert empty(tmp_path / "data")


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "train_data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataUnavailable, match="refusing to load builtins.print"):
        import_imagenet32(tmp_path, tmp_path / "data", verify=False)


def test_folder_without_batches(tmp_path):
    with pytest.raises(DataUnavailable, match="No Imagenet32 training batch files") as info:
        import_imagenet32(tmp_path, tmp_path / "data")
    assert "reference-archive" in str(info.value)


def write_reference(src: Path, classes=(0, 5), dtype="float32") -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    (src / "classes").mkdir(parents=True)
    arrays = {}
    for c in classes:
        arrays[c] = rng.random((700, 3, 32, 32)).astype(dtype)
        np.save(src / "classes" / f"{c}.npy", arrays[c])
    return arrays


def test_reference_archive_is_copied_unchanged(tmp_path):
    arrays = write_reference(tmp_path / "ref")
    order = np.stack([np.random.default_rng(r).permutation(1000) for r in range(3)])
    (tmp_path / "ref" / "class_order").write_bytes(pickle.dumps(order))
    report = import_reference_archive(tmp_path / "ref", tmp_path / "data")
    assert report.classes == (0, 5) and report.skipped == {}
    assert report.unverified == ("classes/0.npy", "classes/5.npy", "class_order")
    store = load_imagenet32_store(tmp_path / "data")
    manifest = store.manifest
    assert manifest["source"] == "reference archive" and manifest["n_classes"] == 2
    assert manifest["dtype"] == "float32" and "not rescaled" in manifest["pixel_scale"]
    lo, hi = min(a.min() for a in arrays.values()), max(a.max() for a in arrays.values())
    assert manifest["value_range"] == [float(lo), float(hi)]
    assert manifest["class_order"] == {"file": "class_order", "shape": [3, 1000],
                                       "sha256": sha256_file(tmp_path / "ref" / "class_order")}
    for c in (0, 5):
        assert manifest["classes"][str(c)]["sha256"] == sha256_file(tmp_path / "ref" / "classes" / f"{c}.npy")
        np.testing.assert_array_equal(store.images(c), arrays[c])
    np.testing.assert_array_equal(store.class_order, order)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: np.save(d / "classes" / "7.npy", np.zeros((600, 3, 32, 32), np.uint8)), "expected a numeric array"),
    (lambda d: np.save(d / "classes" / "7.npy", np.zeros((700, 3, 32, 32), np.uint8)), "mix dtypes"),
    (lambda d: np.save(d / "classes" / "7.npy", np.full((700, 3, 32, 32), np.nan, np.float32)), "NaN"),
    (lambda d: np.save(d / "classes" / "1000.npy", np.zeros(1)), "Unexpected file"),
    (lambda d: (d / "class_order").write_bytes(pickle.dumps([[0, 0, 1]])), "permutation"),
])
def test_reference_archive_validation(tmp_path, mutate, message):
    write_reference(tmp_path / "ref")
    mutate(tmp_path / "ref")
    with pytest.raises(DataUnavailable, match=message):
        import_reference_archive(tmp_path / "ref", tmp_path / "data")
    assert empty(tmp_path / "data")


def test_missing_store_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTIBENCH_DATA", str(tmp_path / "env"))
    with pytest.raises(DataUnavailable) as info:
        load_imagenet32_store()
    message = str(info.value)
    assert str(tmp_path / "env" / "imagenet32") in message
    assert "image-net.org" in message and "https://patrykchrabaszcz.github.io/Imagenet32/" in message
    assert f"plastibench data import imagenet32 SRC --data-dir {tmp_path / 'env'}" in message
    assert f"plastibench data import reference-archive SRC --data-dir {tmp_path / 'env'}" in message
    assert "PLASTIBENCH_DATA" in message and "--data-dir DIR" in message


app = typer.Typer()
app.add_typer(data_app, name="data")
runner = CliRunner()


def test_cli_import_imagenet32(official, known_md5, tmp_path):
    result = runner.invoke(app, ["data", "import", "imagenet32", str(official), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"Imported 3 classes (2,100 images) into {tmp_path / 'imagenet32'}" in result.stdout
    assert "Skipped 1 classes with fewer than 700 images" in result.stdout and "999: 500" in result.stdout
    assert "Not used: val_data" in result.stdout and "Unverified" not in result.stdout
    assert load_imagenet32_store(tmp_path).classes == (0, 1, 2)


def test_cli_checksum_mismatch_then_no_verify(official, tmp_path):
    args = ["data", "import", "imagenet32", str(official), "--data-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "checksum mismatch" in result.stderr and "--no-verify" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "Unverified (no known checksum, or --no-verify): 2 source files" in result.stdout


def test_cli_import_reference_archive(tmp_path):
    write_reference(tmp_path / "ref")
    result = runner.invoke(app, ["data", "import", "reference-archive", str(tmp_path / "ref"),
                                 "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "Imported 2 classes (1,400 images)" in result.stdout


@pytest.mark.parametrize("command", ["imagenet32", "reference-archive"])
def test_cli_bad_input(tmp_path, command):
    result = runner.invoke(app, ["data", "import", command, str(tmp_path), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "Error: No " in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["data", "import", command, str(tmp_path / "absent")])
    assert result.exit_code == 2 and "Invalid value" in result.stderr
