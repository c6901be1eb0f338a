"""Shared fixtures: tiny data sets in the official on-disk formats, a quiet torch, and real clusters
(a single-node Slurm, a local Ray) for the tests marked ``cluster``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from plastibench.data.mnist import write_idx

# The test networks are tiny: one intra-op thread is much faster than several, above all when
# other processes share the CPU (spinning OpenMP threads then slow small ops down tenfold).
torch.set_num_threads(1)

TINY_TRAIN = 300
TINY_TEST = 50


def write_tiny_mnist(root: Path, n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, seed: int = 0) -> Path:
    """Random 28x28 uint8 images with labels 0-9, gzipped IDX under ``root/mnist/``; returns ``root``."""
    g = np.random.default_rng(seed)
    folder = Path(root) / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10  # every class present
        g.shuffle(labels)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return Path(root)


@pytest.fixture
def tiny_mnist(tmp_path) -> Path:
    """Data root holding a 300-image MNIST (official names, gzipped IDX) in ``<root>/mnist/``.

    Its checksums are not the official ones: runs need ``--data-dir <root> --no-verify``
    (``verify=False`` through the API).
    """
    return write_tiny_mnist(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_tiny_mnist(tmp_path_factory) -> Path:
    """:func:`tiny_mnist` written once for the session, for tests that only read it."""
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist-shared"))


@pytest.fixture
def offline(monkeypatch):
    """Make every MNIST download fail at once, as on a machine without network."""
    from plastibench.data import mnist
    from plastibench.data.paths import DataUnavailable

    def fail(urls, dest, sha256, **kwargs):
        raise DataUnavailable(f"Could not download {Path(dest).name} (network disabled in tests)")

    monkeypatch.setattr(mnist, "download_verified", fail)


def write_tiny_imagenet32(root: Path, n_classes: int = 5, seed: int = 0) -> Path:
    """An ImageNet 32x32 store of ``n_classes`` classes (700 uint8 images each), imported by
    ``plastibench data import imagenet32`` from one batch file in the official pickle format;
    returns the data root. Images are noise plus a bright 16x16 patch whose channel and quadrant
    depend on the class, so any two classes are separable. Not the official checksums: use
    ``verify=False`` / ``--no-verify``."""
    import pickle

    from plastibench.data.imagenet32 import import_imagenet32

    g = np.random.default_rng(seed)
    labels = np.repeat(np.arange(1, n_classes + 1), 700)
    g.shuffle(labels)
    src = Path(root) / "imagenet32-src"
    src.mkdir(parents=True, exist_ok=True)
    images = g.integers(0, 100, (len(labels), 3, 32, 32), dtype=np.uint8)
    for c in range(n_classes):
        quadrant = (c // 3) % 4
        rows, cols = slice(16 * (quadrant // 2), 16 * (quadrant // 2) + 16), slice(16 * (quadrant % 2), 16 * (quadrant % 2) + 16)
        images[labels == c + 1, c % 3, rows, cols] += 150
    data = images.reshape(len(labels), 3072)
    with open(src / "train_data_batch_1", "wb") as f:
        pickle.dump({"data": data, "labels": labels.tolist(), "mean": data.mean(0)}, f, protocol=2)
    import_imagenet32(src, Path(root) / "data", verify=False)
    return Path(root) / "data"


@pytest.fixture(scope="session")
def tiny_imagenet32(tmp_path_factory) -> Path:
    """Data root holding a 5-class ImageNet 32x32 store in ``<root>/imagenet32/`` (unverified)."""
    return write_tiny_imagenet32(tmp_path_factory.mktemp("imagenet32"))


@pytest.fixture(scope="session")
def imagenet32_writer():
    """:func:`write_tiny_imagenet32`, for tests that need their own store or source files."""
    return write_tiny_imagenet32


def write_tiny_cifar100(root: Path, train_per_class: int = 8, test_per_class: int = 2, seed: int = 0) -> Path:
    """CIFAR-100 in the official python-pickle layout (``<root>/cifar-100-python/{train,test,meta}``)
    with ``train_per_class`` / ``test_per_class`` random uint8 images of each of the 100 classes, in
    shuffled file order; returns ``root``. Not the official checksums: use ``verify=False``."""
    import pickle

    g = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        g.shuffle(labels)
        data = g.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist(), "coarse_labels": [0] * len(labels)}, f,
                        protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f, protocol=2)
    return Path(root)


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory) -> Path:
    """Data root holding a CIFAR-100 of 8 training and 2 test images per class (unverified)."""
    return write_tiny_cifar100(tmp_path_factory.mktemp("cifar100") / "data")


@pytest.fixture
def fast_resnet_init():
    """While active, ``rng.normal`` draws from ``torch.randn`` (seeded): a BatchedResNet18 builds in
    milliseconds instead of seconds. For tests in which the initial values do not matter."""
    from unittest import mock

    from plastibench import rng

    gen = torch.Generator().manual_seed(0)

    def draw(seeds, step, purpose, shape, std=1.0):
        return std * torch.randn(len(seeds), *shape, generator=gen)

    with mock.patch.object(rng, "normal", draw):
        yield


def write_tiny_emnist(root: Path, splits: dict | None = None, seed: int = 0) -> Path:
    """EMNIST's official archive ``<root>/emnist/gzip.zip``: for each ``splits[name][part] = (images, labels)``
    the gzipped IDX members ``gzip/emnist-<name>-<part>-images-idx3-ubyte.gz`` and ``...-labels-idx1-ubyte.gz``,
    images stored as given (EMNIST's transposed storage). Default: ``balanced`` with 94 train and 47 test random
    images (every one of the 47 classes present) and a ``byclass`` split of other images. Returns ``root``.
    Not the official checksums: use ``verify=False``."""
    import tempfile
    import zipfile

    g = np.random.default_rng(seed)
    if splits is None:
        splits = {name: {part: (g.integers(0, 256, (47 * k, 28, 28), dtype=np.uint8),
                                g.permutation(np.arange(47 * k) % classes).astype(np.uint8))
                         for part, k in (("train", 2), ("test", 1))}
                  for name, classes in (("balanced", 47), ("byclass", 62))}
    folder = Path(root) / "emnist"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(folder / "gzip.zip", "w") as archive:
        for name, parts in splits.items():
            for part, arrays in parts.items():
                for kind, array in zip(("images-idx3", "labels-idx1"), arrays):
                    member = f"emnist-{name}-{part}-{kind}-ubyte.gz"
                    write_idx(Path(scratch) / member, array)
                    archive.write(Path(scratch) / member, f"gzip/{member}")
    return Path(root)


@pytest.fixture(scope="session")
def tiny_emnist(tmp_path_factory) -> Path:
    """Data root holding a tiny EMNIST archive ``<root>/emnist/gzip.zip`` (unverified; see write_tiny_emnist)."""
    return write_tiny_emnist(tmp_path_factory.mktemp("emnist") / "data")


@pytest.fixture(scope="session")
def emnist_writer():
    """:func:`write_tiny_emnist`, for tests that need their own archive."""
    return write_tiny_emnist


def write_tiny_cifar10(root: Path, batches: dict | None = None, seed: int = 0) -> Path:
    """``<root>/cifar-10-python.tar.gz`` in the official layout: ``cifar-10-batches-py/`` with ``data_batch_1..5``,
    ``test_batch`` and ``batches.meta``, pickled (protocol 2, bytes keys) as the official Python 2 files read in
    Python 3. ``batches``: batch name -> (data uint8 [N, 3072], labels); default: 2 random images of each class in
    each training batch and 1 in the test batch, shuffled. Returns ``root``. Not the official checksums."""
    import io
    import pickle
    import tarfile

    g = np.random.default_rng(seed)
    if batches is None:
        batches = {name: (g.integers(0, 256, (10 * k, 3072), dtype=np.uint8), g.permutation(np.arange(10 * k) % 10))
                   for name, k in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 1)]}
    files = {name: {b"batch_label": name.encode(), b"labels": [int(y) for y in labels], b"data": data,
                    b"filenames": [b"x.png"] * len(data)} for name, (data, labels) in batches.items()}
    files["batches.meta"] = {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                             b"label_names": [f"class_{i}".encode() for i in range(10)]}
    Path(root).mkdir(parents=True, exist_ok=True)
    with tarfile.open(Path(root) / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, content in files.items():
            raw = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return Path(root)


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory) -> Path:
    """Data root holding a tiny ``cifar-10-python.tar.gz`` (unverified; extracted on first load)."""
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar10") / "data")


@pytest.fixture(scope="session")
def cifar10_writer():
    """:func:`write_tiny_cifar10`, for tests that need their own tarball."""
    return write_tiny_cifar10


@pytest.fixture(scope="session")
def spy_method():
    """A method that records the task indices of its ``on_task_start`` calls (``.calls``)."""
    from plastibench.method import Method

    class Spy(Method):
        def configure_network(self, net):
            self.calls = []
            return net

        def on_task_start(self, task_index):
            self.calls.append(task_index)

    return Spy


@pytest.fixture
def dropped_connection(monkeypatch):
    """Make every download write part of a file, then fail as a dropped connection does."""
    from plastibench.data import download

    def fetch(url, tmp, **kwargs):
        tmp.write_bytes(b"\x1f\x8b\x08 the first bytes")
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(download, "_fetch", fetch)


ROOT = Path(__file__).resolve().parents[1]


def missing(what: str, install: str):
    """Skip a test whose cluster software is absent, saying how to install it; on CI (CI=true),
    which installs it, fail instead."""
    message = f"{what} is not installed here; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def environ(**values: str):
    """Within: these environment variables set in this process (and the ones it starts)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def pickled_by_value(request):
    """Worker processes (loky, submitit's jobs, Ray) cannot import a test module: the module's
    functions go by value, through every copy of cloudpickle there is (cloudpickle, Ray's, and the
    one older joblib versions carry)."""
    for name in ("cloudpickle", "joblib.externals.cloudpickle", "ray.cloudpickle"):
        try:
            importlib.import_module(name).register_pickle_by_value(request.module)
        except ImportError:
            pass


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Path:
    """A single-node Slurm cluster on localhost for the session (``scripts/slurm-local``), with
    ``SLURM_CONF`` pointing to it; yields its directory (config, logs, state)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin"
    if not all(shutil.which(b, path=path) for b in ("sbatch", "slurmctld", "slurmd", "munged")):
        missing("Slurm", "apt-get install slurm-wlm munge")
    if importlib.util.find_spec("submitit") is None:
        missing("submitit", 'pip install -e ".[cluster]"')
    directory = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "scripts" / "slurm-local")
    started = subprocess.run([script, "start", str(directory)], capture_output=True, text=True)
    if started.returncode:
        pytest.fail(f"scripts/slurm-local start failed:\n{started.stderr}")
    try:
        with environ(SLURM_CONF=str(directory / "slurm.conf")):
            yield directory
    finally:
        subprocess.run([script, "stop", str(directory)], capture_output=True)


@pytest.fixture(scope="session")
def ray_env():
    """Ray importable; the clusters this session starts or joins without token authentication or
    usage reports, their files under a temporary directory removed at the end (short: Ray's
    socket paths must fit in 107 bytes)."""
    if importlib.util.find_spec("ray") is None:
        missing("ray", 'pip install -e ".[cluster]"')
    temp = tempfile.mkdtemp(prefix="ray")
    try:
        with environ(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=temp):
            yield
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_env, tmp_path_factory) -> str:
    """A Ray head on 127.0.0.1 with 2 CPUs for the session (``ray start --head --block``, stopped
    by SIGTERM, which ends every process it started); yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("ray") / "head.log"
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
               "--disable-usage-stats"]
    with open(log, "w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "block forever" not in log.read_text():
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            head.terminate()
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()


@pytest.fixture(scope="session")
def rl_extra():
    """MuJoCo 4 (``mujoco.batch``) and gymnasium's MuJoCo environments importable (``plastibench[rl]``)."""
    try:
        import gymnasium.envs.mujoco  # noqa: F401
        import mujoco.batch  # noqa: F401
    except ImportError as e:
        missing(f"MuJoCo 4 or gymnasium[mujoco] ({e})", 'pip install -e ".[rl]"')
