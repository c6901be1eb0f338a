"""``plastibench data``: fetch downloadable datasets, import those that need a manual download.

``cli.py`` mounts it: ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cli_common import fail
from .data import cifar10, cifar100, emnist
from .data.imagenet32 import (IMAGES_PER_CLASS, ImportReport, ProgressFn, import_imagenet32,
                              import_reference_archive)
from .data.paths import DataUnavailable, resolve_data_dir

data_app = typer.Typer(help="Get datasets: fetch the downloadable ones, import manual downloads.",
                       no_args_is_help=True)
import_app = typer.Typer(help="Import manually downloaded data into the data directory.",
                         no_args_is_help=True)
fetch_app = typer.Typer(help="Download a dataset into the data directory, checksum-verified.",
                        no_args_is_help=True)
data_app.add_typer(import_app, name="import")
data_app.add_typer(fetch_app, name="fetch")
err = Console(stderr=True)

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Dataset root (else $PLASTIBENCH_DATA, else the user cache dir).")]
Verify = Annotated[bool, typer.Option(help="Refuse files whose checksum differs from the official one.")]
SrcDir = Annotated[Path, typer.Argument(metavar="SRC", exists=True, file_okay=False,
                                        help="Folder holding the downloaded files.")]
LIST_MAX = 10


def _listing(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - LIST_MAX} more)" if len(items) > LIST_MAX else ""
    return ", ".join(items[:LIST_MAX]) + more


@contextmanager
def _progress() -> Iterator[ProgressFn]:
    """A progress display on stderr, and the (phase, done, total) callback drawing one bar per phase."""
    bars: dict[str, int] = {}
    columns = (TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        def update(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=total)
            progress.update(bars[phase], completed=done, total=total)

        yield update


def _summary(report: ImportReport) -> None:
    typer.echo(f"Imported {len(report.classes)} classes ({report.n_images:,} images) into "
               f"{report.store}")
    if report.skipped:
        typer.echo(f"Skipped {len(report.skipped)} classes with fewer than {IMAGES_PER_CLASS} images "
                   "in the files given (class id: images): "
                   + _listing([f"{c}: {n}" for c, n in sorted(report.skipped.items())]))
    if report.unverified:
        typer.echo(f"Unverified (no known checksum, or --no-verify): {len(report.unverified)} "
                   f"source files: {_listing(report.unverified)}")
    if report.ignored:
        typer.echo(f"Not used: {_listing(report.ignored)}")


@import_app.command("imagenet32")
def import_imagenet32_command(src: SrcDir, data_dir: DataDir = None, verify: Verify = True):
    """Import the official Imagenet32 batches (train_data_batch_1..10, pickle or .npz) from SRC.

    Download Imagenet32_train.zip from image-net.org (account needed; see
    https://patrykchrabaszcz.github.io/Imagenet32/) and unzip it into SRC.
    Each class gets the first 700 of its training images in batch order (600 train, 100 test).
    Classes with fewer images in the files given are skipped.
    """
    try:
        with _progress() as progress:
            report = import_imagenet32(src, data_dir, verify=verify, progress=progress)
    except (DataUnavailable, OSError) as exc:
        raise fail(str(exc), 1)
    _summary(report)
    typer.echo("Run it with --task cimagenet --protocol short or paper (input_transform div255: pixels / 255).")


@import_app.command("reference-archive")
def import_reference_command(src: SrcDir, data_dir: DataDir = None):
    """Import Dohare et al.'s per-class files (SRC/classes/<i>.npy, optional SRC/class_order).

    These are the files the paper's Continual ImageNet used: the Google Drive archive linked
    from lop/imagenet/README.md of the reference repository, extracted into SRC.
    They are copied unchanged; the protocols short-archive and paper-archive feed them as stored,
    as the reference does.
    """
    try:
        with _progress() as progress:
            report = import_reference_archive(src, data_dir, progress=progress)
    except (DataUnavailable, OSError) as exc:
        raise fail(str(exc), 1)
    _summary(report)
    typer.echo("Run it with --task cimagenet --protocol short-archive or paper-archive (input_transform "
               "as_stored: values fed unchanged, as the reference does).")


def _fetch(title: str, folder: str, load: Callable[..., Any], classes: int, data_dir: Optional[Path],
           verify: bool) -> None:
    """Load a dataset with ``load`` (downloading it if missing); report its folder and checksums."""
    try:
        with err.status(f"Fetching and checking {title}"):
            data = load(data_dir, verify=verify)
    except (DataUnavailable, OSError) as exc:
        raise fail(str(exc), 1)
    typer.echo(f"{title} ready in {resolve_data_dir(data_dir) / folder}: {len(data.train_labels):,} train and "
               f"{len(data.test_labels):,} test images, {classes} classes.")
    typer.echo("Checksums: " + ("official (MD5 and SHA-256 match)" if data.verified else
                                "NOT the official files (unverified)"))
    for name, digest in data.sha256.items():
        typer.echo(f"  {name}: SHA-256 {digest}")


@fetch_app.command("cifar100")
def fetch_cifar100_command(data_dir: DataDir = None, verify: Verify = True):
    """Download CIFAR-100 (python version) from its official URL and check it."""
    fmt = cifar100.FORMAT
    _fetch(fmt.title, fmt.folder, cifar100.load_cifar100, fmt.classes, data_dir, verify)


@fetch_app.command("cifar10")
def fetch_cifar10_command(data_dir: DataDir = None, verify: Verify = True):
    """Download CIFAR-10 (python version) from its official URL and check it."""
    fmt = cifar10.FORMAT
    _fetch(fmt.title, fmt.folder, cifar10.load_cifar10, fmt.classes, data_dir, verify)


@fetch_app.command("emnist")
def fetch_emnist_command(data_dir: DataDir = None, verify: Verify = True):
    """Download EMNIST (NIST's gzip.zip; the balanced split is read) and check it."""
    _fetch("EMNIST (balanced)", emnist.FOLDER, emnist.load_emnist, emnist.CLASSES, data_dir, verify)
