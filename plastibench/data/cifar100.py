"""CIFAR-100 in its official on-disk format (the python-pickle tarball, torchvision layout)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from plastibench.data.cifar import CifarData, CifarFormat, Official, load_cifar

URLS = ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
FORMAT = CifarFormat(title="CIFAR-100", command="cifar100", archive="cifar-100-python.tar.gz",
                     folder="cifar-100-python", train=("train",), test="test", meta="meta",
                     labels_key="fine_labels", names_key="fine_label_names", classes=100)
# MD5s as published by torchvision; SHA-256s identical in several independent public loaders
# (archive: Keras and torchvision's prototype datasets; 169,001,437 bytes).
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
SHA256 = {
    "train": "735e79b04f092ca3d2e6d07f368c0a7d70d48c48d28865950cc24454cf45129b",
    "test": "4b67687d9933c4db8f0831104447f15b93774f4f464bd0516f0f0f2ac83b7864",
    "meta": "a5d4786345c961390f865e93b434dbd5c6904ce880667e0cb888c97d449f28b9",
}


def load_cifar100(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    urls: Sequence[str] | None = None,
) -> CifarData:
    """Load CIFAR-100 from ``resolve_data_dir(data_dir) / "cifar-100-python"`` (see ``load_cifar``).

    Images uint8 ``[N, 3, 32, 32]``, 50,000 train and 10,000 test; labels: the fine labels, int64
    in 0..99; label_names: the 100 fine label names.
    """
    official = Official(URLS, ARCHIVE_MD5, ARCHIVE_SHA256, MD5, SHA256)
    return load_cifar(FORMAT, official, data_dir, download=download, verify=verify, urls=urls)
