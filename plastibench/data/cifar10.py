"""CIFAR-10 in its official on-disk format (the python-pickle tarball, torchvision layout).

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1..5`` (10,000 training images
each), ``test_batch`` (10,000) and ``batches.meta`` (the 10 label names). The training set is the
five batches concatenated in order, as torchvision's ``CIFAR10(train=True)`` builds it (the
loader UPGD's label-permuted CIFAR-10 uses: mohmdelsayed/upgd ``core/task/label_permuted_cifar10.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from plastibench.data.cifar import CifarData, CifarFormat, Official, load_cifar

URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
FORMAT = CifarFormat(title="CIFAR-10", command="cifar10", archive="cifar-10-python.tar.gz",
                     folder="cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)),
                     test="test_batch", meta="batches.meta", labels_key="labels", names_key="label_names",
                     classes=10)
# MD5s as published by torchvision (torchvision/datasets/cifar.py). SHA-256 of the archive
# (170,498,071 bytes) as Keras pins it (keras/datasets/cifar10.py) and several independent public
# scripts repeat it; SHA-256 of the files identical in four independent public scripts that also
# pin the archive's (one of them pairs each with torchvision's MD5).
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SHA256 = {
    "data_batch_1": "54636561a3ce25bd3e19253c6b0d8538147b0ae398331ac4a2d86c6d987368cd",
    "data_batch_2": "766b2cef9fbc745cf056b3152224f7cf77163b330ea9a15f9392beb8b89bc5a8",
    "data_batch_3": "0f00d98ebfb30b3ec0ad19f9756dc2630b89003e10525f5e148445e82aa6a1f9",
    "data_batch_4": "3f7bb240661948b8f4d53e36ec720d8306f5668bd0071dcb4e6c947f78e9682b",
    "data_batch_5": "d91802434d8376bbaeeadf58a737e3a1b12ac839077e931237e0dcd43adcb154",
    "test_batch": "f53d8d457504f7cff4ea9e021afcf0e0ad8e24a91f3fc42091b8adef61157831",
    "batches.meta": "f962466ef690d46b226450fb9aadc74ba4bc64a76aa526b5827fe4bc5c7125cb",
}


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    urls: Sequence[str] | None = None,
) -> CifarData:
    """Load CIFAR-10 from ``resolve_data_dir(data_dir) / "cifar-10-batches-py"`` (see ``load_cifar``).

    Images uint8 ``[N, 3, 32, 32]``, 50,000 train and 10,000 test; labels int64 in 0..9;
    label_names: the 10 names of ``batches.meta``.
    """
    official = Official(URLS, ARCHIVE_MD5, ARCHIVE_SHA256, MD5, SHA256)
    return load_cifar(FORMAT, official, data_dir, download=download, verify=verify, urls=urls)
