"""Downsampled ImageNet 32x32, imported by hand into a per-class store for Continual ImageNet.

The official Imagenet32 files (Chrabaszcz, Loshchilov & Hutter 2017) need an image-net.org
account, so they cannot be downloaded for the user. ``plastibench data import imagenet32 SRC``
turns the official batch files into the store the task reads; ``plastibench data import
reference-archive SRC`` copies the per-class files that Dohare et al. (2024) distribute instead.

Store layout, under ``<data_dir>/imagenet32/``: ``classes/<i>.npy`` for each class present
(i = official label - 1, in 0..999), each ``[700, 3, 32, 32]`` with rows 0..599 the train
split and 600..699 the test split; ``manifest.json`` (sources, checksums, selection rule,
dtype and value range); ``class_order.npy`` when imported from a reference archive that has one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import secrets
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plastibench.data.files import file_digests, read_pickle
from plastibench.data.download import sha256_file
from plastibench.data.paths import ENV_VAR, DataUnavailable, resolve_data_dir

STORE = "imagenet32"
N_CLASSES = 1000
IMAGES_PER_CLASS = 700
TRAIN_PER_CLASS = 600
SHAPE = (IMAGES_PER_CLASS, 3, 32, 32)
BATCHES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL = "val_data"
IMAGENET32_PAGE = "https://patrykchrabaszcz.github.io/Imagenet32/"
IMAGENET_DOWNLOADS = "https://image-net.org/download-images"
REFERENCE_ARCHIVE = "https://drive.google.com/file/d/1i0ok3LT5_mYmFWaN7wlkpHsitUngGJ8z"
# MD5 of the extracted official pickles: unofficial (image-net.org publishes none), identical
# in several independent public loaders. Files not listed here (e.g. .npz) are unverified.
MD5 = {
    "train_data_batch_1": "6c4495e65cd24a8c3019857ef9b758ee",
    "train_data_batch_2": "3dd727de4155836807dfc19f98c9fe70",
    "train_data_batch_3": "03d3dc4e850e23e1d526f268a0196296",
    "train_data_batch_4": "876f7e6d6ddb1f52ecb654ffdc8293f6",
    "train_data_batch_5": "c789bcdd1feed34a9bc58598a1a1bf7d",
    "train_data_batch_6": "8ce5344cb1e11f31bc507cae4c856083",
    "train_data_batch_7": "32ecc8ad6c55b1c9cb6cf79a2cc46094",
    "train_data_batch_8": "bdeb6da3d05771121992b48c59c69439",
    "train_data_batch_9": "58417149b5ce31688f805341e7f57b4f",
    "train_data_batch_10": "46ad60a1144aaf97a143914453b0dabb",
    "val_data": "06c02b8b4c8de8b3a36b07859a49de6f",
}
SELECTION_RULE = (
    "For each class, the first 700 images with its label when the given training batches are "
    "read in the order train_data_batch_1..10, each file in its own order; rows 0-599 are the "
    "train split and rows 600-699 the test split, so test images are 100 held-out official "
    "training images (the reference's 600/100 split of 700). val_data is never used. Classes "
    "with fewer than 700 images in the given files are skipped."
)
ProgressFn = Callable[[str, int, int], None]
"""Progress callback: (phase, done, total)."""


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote: the store, the classes in it, and what was skipped or unverified."""

    store: Path
    classes: tuple[int, ...]
    skipped: dict[int, int] = field(default_factory=dict)  # class id -> images available (< 700)
    unverified: tuple[str, ...] = ()  # source files with no known checksum, or not matching it
    ignored: tuple[str, ...] = ()  # files found in SRC but not used

    @property
    def n_images(self) -> int:
        return len(self.classes) * IMAGES_PER_CLASS


@dataclass(frozen=True, eq=False)
class Imagenet32Store:
    """An imported store: class ids present, their images, the manifest and the class order."""

    root: Path
    classes: tuple[int, ...]
    manifest: dict[str, Any]
    class_order: np.ndarray | None = None  # [runs, classes] permutations (reference archive only)
    verify: bool = True

    def images(self, class_id: int) -> np.ndarray:
        """The class's ``[700, 3, 32, 32]`` images (train rows first), SHA-256 checked if ``verify``."""
        entry = self.manifest["classes"].get(str(class_id))
        if entry is None:
            raise DataUnavailable(f"Class {class_id} is not in the ImageNet 32x32 store {self.root} "
                                  f"({len(self.classes)} classes imported). Import the missing "
                                  "source files (see plastibench data import --help).")
        path = self.root / entry["file"]
        try:
            raw = path.read_bytes()
            if self.verify and (actual := hashlib.sha256(raw).hexdigest()) != entry["sha256"]:
                raise DataUnavailable(
                    f"{path} changed since it was imported: SHA-256 {actual}, manifest says "
                    f"{entry['sha256']} (checksum mismatch). Import the data again, or pass "
                    "--no-verify to use it anyway (results are then marked unverified).")
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataUnavailable(f"Unreadable ImageNet 32x32 class file {path}: {exc}. "
                                  "Import the data again.") from exc
        if array.shape != SHAPE:
            raise DataUnavailable(f"{path}: expected shape {list(SHAPE)}, got {list(array.shape)}. "
                                  "Import the data again.")
        return array


def _import_commands(root: Path) -> str:
    return (f"  plastibench data import imagenet32 SRC --data-dir {root}\n"
            f"  plastibench data import reference-archive SRC --data-dir {root}")


def load_imagenet32_store(data_dir: str | os.PathLike[str] | None = None, *,
                          verify: bool = True) -> Imagenet32Store:
    """Open the store in ``resolve_data_dir(data_dir) / "imagenet32"``.

    Raises ``DataUnavailable`` saying where the data comes from and which command imports it
    when there is no store. With ``verify`` each class file is SHA-256 checked when loaded.
    """
    root = resolve_data_dir(data_dir)
    store = root / STORE
    try:
        manifest = json.loads((store / "manifest.json").read_text())
    except FileNotFoundError:
        raise DataUnavailable(
            f"ImageNet 32x32 data not found: no imported store in {store} (manifest.json missing).\n"
            "It cannot be downloaded automatically: the official downsampled ImageNet 32x32 "
            "(Chrabaszcz et al. 2017) needs an image-net.org account. Either\n"
            f"  - log in at {IMAGENET_DOWNLOADS}, download Imagenet32_train.zip (see "
            f"{IMAGENET32_PAGE}), unzip it into a folder SRC (train_data_batch_1..10), or\n"
            f"  - download the reference archive of Dohare et al. 2024 ({REFERENCE_ARCHIVE}) and "
            "extract it into SRC (SRC/classes/<i>.npy),\n"
            f"then import it with the matching command:\n{_import_commands(root)}\n"
            f"To use another directory, pass --data-dir DIR or set {ENV_VAR}=DIR "
            f"(the store is looked for in DIR/{STORE}/).") from None
    except (OSError, ValueError) as exc:
        raise DataUnavailable(f"Unreadable {store / 'manifest.json'} ({exc}); import the data "
                              f"again:\n{_import_commands(root)}") from exc
    order = store / "class_order.npy"
    return Imagenet32Store(
        root=store,
        classes=tuple(sorted(int(c) for c in manifest["classes"])),
        manifest=manifest,
        class_order=np.load(order, allow_pickle=False) if order.is_file() else None,
        verify=verify,
    )


def _find_sources(src: Path) -> tuple[list[Path], list[str]]:
    """Training batches in ``src`` in batch order (pickle preferred over .npz), and unused files."""
    batches, ignored = [], []
    for stem in BATCHES:
        found = [p for p in (src / stem, src / f"{stem}.npz") if p.is_file()]
        batches += found[:1]
        ignored += [p.name for p in found[1:]]
    ignored += [name for name in (VAL, f"{VAL}.npz") if (src / name).is_file()]
    return batches, ignored


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 [N, 3072], class ids int64 [N] = label - 1) of one official batch file."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data, labels = npz["data"], npz["labels"]
        else:
            batch = read_pickle(path)
            data, labels = batch["data"], batch["labels"]
        data, labels = np.asarray(data), np.asarray(labels)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"expected 'data' uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu" or \
                (labels.size and not 1 <= labels.min() <= labels.max() <= N_CLASSES):
            raise ValueError(f"expected {len(data)} integer 'labels' in 1..{N_CLASSES}")
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise DataUnavailable(f"Unreadable Imagenet32 batch file {path}: {exc}. Replace it with "
                              "the official file.") from exc
    return data, labels.astype(np.int64) - 1


def _staging(root: Path) -> Path:
    staging = root / f".{STORE}.tmp-{secrets.token_hex(4)}"
    (staging / "classes").mkdir(parents=True)
    return staging


def _publish(staging: Path, store: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest and swap the staged store in place of any previous one."""
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    old = store.with_name(f".{store.name}.old-{secrets.token_hex(4)}")
    if store.exists():
        os.replace(store, old)
    os.replace(staging, store)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(source: str, classes: dict[str, Any], dtype: str, value_range: list, **extra) -> dict:
    return {
        "format": 1,
        "source": source,
        "n_classes": len(classes),
        "images_per_class": IMAGES_PER_CLASS,
        "train_images_per_class": TRAIN_PER_CLASS,
        "test_images_per_class": IMAGES_PER_CLASS - TRAIN_PER_CLASS,
        "dtype": dtype,
        "value_range": value_range,
        **extra,
        "classes": classes,
    }


def _report(progress: ProgressFn | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)


def import_imagenet32(src: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
                      *, verify: bool = True, progress: ProgressFn | None = None) -> ImportReport:
    """Build the store from the official Imagenet32 batch files in the folder ``src``.

    Any subset of ``train_data_batch_1..10`` (pickles, or the ``.npz`` variants with the same
    keys) is read. Selection rule: for each class, the first 700 images with its label when
    the given training batches are read in the order ``train_data_batch_1``, ...,
    ``train_data_batch_10``, each file in its own order. Rows 0..599 are the train split and
    600..699 the test split, so the test images are 100 held-out *official training* images,
    as in the reference's 600/100 split of 700; ``val_data`` is never used. Classes with fewer
    than 700 images in the given files are skipped and reported. The official batches are
    shuffled (about 128 images per class each), so most classes need about six of them.

    Each source file's MD5 and SHA-256 go to the manifest; with ``verify`` a file whose name
    has a known MD5 (``MD5``) must match it. Pixels stay uint8 0..255, as in the official files.
    The store (see the module docstring) replaces any previous one, only once complete.
    """
    src = Path(src)
    batches, ignored = _find_sources(src)
    if not batches:
        raise DataUnavailable(
            f"No Imagenet32 training batch files in {src}: expected some of "
            f"{', '.join(BATCHES)} (or .npz). Unzip Imagenet32_train.zip ({IMAGENET32_PAGE}) and "
            "pass the folder holding them. For the reference archive of Dohare et al. "
            "(SRC/classes/<i>.npy) use: plastibench data import reference-archive SRC")
    sources = {}
    for done, path in enumerate(batches):
        _report(progress, "checking files", done, len(batches))
        md5, sha256 = file_digests(path)
        known = MD5.get(path.name)
        if verify and known is not None and md5 != known:
            raise DataUnavailable(
                f"Imagenet32 file {path} does not match the official file: MD5 {md5}, expected "
                f"{known} (checksum mismatch). Replace it with the official file, or pass "
                "--no-verify to import it anyway (recorded as unverified).")
        sources[path.name] = {"bytes": path.stat().st_size, "md5": md5, "sha256": sha256,
                              "verified": md5 == known}
    _report(progress, "checking files", len(batches), len(batches))

    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = _staging(root)
    try:
        filled = np.zeros(N_CLASSES, np.int64)
        available = np.zeros(N_CLASSES, np.int64)
        taken: dict[int, dict[str, int]] = {}
        lo, hi = 255, 0
        for done, path in enumerate(batches):
            _report(progress, "reading batches", done, len(batches))
            data, labels = _read_batch(path)
            sources[path.name]["images"] = len(labels)
            counts = np.bincount(labels, minlength=N_CLASSES)
            available += counts
            # Stable sort: each class's rows stay in file order.
            by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
            for c in np.flatnonzero(counts):
                rows = by_class[c][: IMAGES_PER_CLASS - filled[c]]
                if not len(rows):
                    continue
                images = data[rows].reshape(-1, 3, 32, 32)
                lo, hi = min(lo, int(images.min())), max(hi, int(images.max()))
                out = np.lib.format.open_memmap(staging / "classes" / f"{c}.npy",
                                                mode="r+" if filled[c] else "w+",
                                                dtype=np.uint8, shape=SHAPE)
                out[filled[c]: filled[c] + len(rows)] = images
                out.flush()
                del out
                filled[c] += len(rows)
                taken.setdefault(int(c), {})[path.name] = len(rows)
        _report(progress, "reading batches", len(batches), len(batches))

        complete = [int(c) for c in np.flatnonzero(filled == IMAGES_PER_CLASS)]
        skipped = {int(c): int(available[c]) for c in np.flatnonzero((available > 0) &
                                                                     (filled < IMAGES_PER_CLASS))}
        for c in skipped:
            (staging / "classes" / f"{c}.npy").unlink()
        if not complete:
            raise DataUnavailable(
                f"No class has {IMAGES_PER_CLASS} images in the files given ({', '.join(sources)}); "
                "nothing was imported. The official batches are shuffled (about 128 images per "
                "class each): give all ten train_data_batch files.")
        classes = {}
        for done, c in enumerate(complete):
            _report(progress, "hashing classes", done, len(complete))
            classes[str(c)] = {"file": f"classes/{c}.npy",
                               "sha256": sha256_file(staging / "classes" / f"{c}.npy"),
                               "taken": taken[c]}
        _report(progress, "hashing classes", len(complete), len(complete))
        manifest = _manifest(
            "Imagenet32 official batches", classes, "uint8", [lo, hi],
            pixel_scale="uint8 0-255 as in the official files (not rescaled; the protocol's input_transform scales)",
            selection_rule=SELECTION_RULE,
            source_files=sources,
            ignored_files=ignored,
            skipped_classes={str(c): n for c, n in skipped.items()},
        )
        _publish(staging, root / STORE, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    unverified = tuple(name for name, s in sources.items() if not s["verified"])
    return ImportReport(root / STORE, tuple(complete), skipped, unverified, tuple(ignored))


def _read_class_order(path: Path) -> np.ndarray:
    """The reference's ``class_order`` pickle as an int64 ``[runs, n]`` array of permutations."""
    try:
        order = np.asarray(read_pickle(path))
        order = order.reshape(1, -1) if order.ndim == 1 else order
        if order.ndim != 2 or order.dtype.kind not in "iu":
            raise ValueError(f"expected integer [runs, classes], got {order.dtype} {list(order.shape)}")
        if not (np.sort(order, axis=1) == np.arange(order.shape[1])).all():
            raise ValueError("each row must be a permutation of the class ids")
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise DataUnavailable(f"Unreadable class_order file {path}: {exc}") from exc
    return order.astype(np.int64)


def import_reference_archive(src: str | os.PathLike[str],
                             data_dir: str | os.PathLike[str] | None = None,
                             *, progress: ProgressFn | None = None) -> ImportReport:
    """Copy the reference's per-class files (``src/classes/<i>.npy``) into the store unchanged.

    ``src`` is the folder the authors' archive was extracted into (or its ``classes`` folder).
    Each file must be ``[700, 3, 32, 32]`` of one numeric dtype shared by all files, with finite
    values; dtype and value range go to the manifest and values are kept as given (no
    rescaling). An optional ``src/class_order`` pickle (per-run class permutations) is saved as
    ``class_order.npy``. No checksums are published for the archive, so it is unverified; the
    SHA-256 of every file is recorded.
    """
    src = Path(src)
    folder = src / "classes" if (src / "classes").is_dir() else src
    files = {}
    for path in sorted(folder.glob("*.npy")):
        if not path.stem.isdigit() or int(path.stem) >= N_CLASSES:
            raise DataUnavailable(f"Unexpected file {path} in the reference archive: class files "
                                  f"are named <i>.npy with i in 0..{N_CLASSES - 1}.")
        files[int(path.stem)] = path
    if not files:
        raise DataUnavailable(f"No reference class files in {folder}: expected classes/<i>.npy "
                              f"(the archive of Dohare et al. 2024, {REFERENCE_ARCHIVE}, "
                              "extracted). For the official Imagenet32 batch files use: "
                              "plastibench data import imagenet32 SRC")
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = _staging(root)
    try:
        classes, dtypes, lo, hi = {}, set(), np.inf, -np.inf
        for done, (c, path) in enumerate(sorted(files.items())):
            _report(progress, "copying classes", done, len(files))
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataUnavailable(f"Unreadable reference class file {path}: {exc}") from exc
            if array.shape != SHAPE or array.dtype.kind not in "uif":
                raise DataUnavailable(f"{path}: expected a numeric array of shape {list(SHAPE)}, "
                                      f"got {array.dtype} {list(array.shape)}")
            if not np.isfinite(array).all():
                raise DataUnavailable(f"{path}: contains NaN or infinite values")
            dtypes.add(array.dtype.name)
            lo, hi = min(lo, array.min().item()), max(hi, array.max().item())
            del array
            dest = staging / "classes" / f"{c}.npy"
            shutil.copyfile(path, dest)
            classes[str(c)] = {"file": f"classes/{c}.npy", "sha256": sha256_file(dest)}
        _report(progress, "copying classes", len(files), len(files))
        if len(dtypes) > 1:
            raise DataUnavailable(f"Reference class files in {folder} mix dtypes "
                                  f"{', '.join(sorted(dtypes))}; expected one.")
        order_source = None
        if (src / "class_order").is_file():
            order = _read_class_order(src / "class_order")
            np.save(staging / "class_order.npy", order)
            order_source = {"file": "class_order", "sha256": sha256_file(src / "class_order"),
                            "shape": list(order.shape)}
        manifest = _manifest(
            "reference archive", classes, dtypes.pop(), [lo, hi],
            pixel_scale="as given in the reference archive (not rescaled; the protocol's input_transform applies)",
            selection_rule="as in the reference archive (files copied unchanged)",
            class_order=order_source,
        )
        _publish(staging, root / STORE, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    unverified = tuple(f"classes/{c}.npy" for c in sorted(files))
    if order_source:
        unverified += ("class_order",)
    return ImportReport(root / STORE, tuple(sorted(files)), unverified=unverified)
