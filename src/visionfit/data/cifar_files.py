"""Loading the `cifar10` and `cifar10-sample` datasets (declared in `cifar`): the official archive's
download, its pickled batches read without running code, and the sample bundled with the package."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from visionfit.data.cifar import (
    BATCHES_FOLDER,
    CIFAR10_CLASSES,
    TRAIN_BATCHES,
    default_cifar10_root,
    find_cifar10,
    is_batches_folder,
)
from visionfit.data.registry import DataRequest, DataSplits
from visionfit.data.samples import ArraySamples
from visionfit.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
SAMPLE_FILE = Path(__file__).parent / "cifar10_sample.npz"


def download_url() -> str:
    """The archive's address; $VISIONFIT_CIFAR10_URL names a mirror serving the same file."""
    return os.environ.get("VISIONFIT_CIFAR10_URL", CIFAR10_URL)


def download_cifar10(root: Path) -> Path:
    """Download the official archive into `root` (md5-checked, with a progress bar) and unpack it.

    Raises `UserError` saying how to use a local copy when the download fails.
    """
    from torchvision.datasets.utils import download_url as torchvision_download

    url = download_url()
    archive = root / "cifar-10-python.tar.gz"
    hint = (
        f"without network, point --data-dir at a folder holding {BATCHES_FOLDER} (or that folder "
        "itself), or use --dataset cifar10-sample"
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the CIFAR-10 folder {root}: {error.strerror}; choose another with --data-dir"
        ) from None
    try:
        torchvision_download(url, str(root), filename=archive.name, md5=CIFAR10_MD5)
    except RuntimeError as error:  # torchvision's "File not found or corrupted." after an md5 mismatch
        archive.unlink(missing_ok=True)
        raise UserError(
            f"the CIFAR-10 download from {url} failed its md5 check ({error}); try again, or {hint}"
        ) from None
    except OSError as error:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
        archive.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error.strerror or error
        raise UserError(f"cannot download CIFAR-10 from {url} ({reason}); {hint}") from None
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as staging:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")  # refuses absolute paths and links outside
        except (tarfile.TarError, OSError) as error:
            raise UserError(f"cannot unpack {archive}: {error}; delete it and try again") from None
        unpacked = Path(staging) / BATCHES_FOLDER
        if not is_batches_folder(unpacked):
            raise UserError(f"{archive} does not hold a {BATCHES_FOLDER} folder; delete it and try again")
        os.replace(unpacked, root / BATCHES_FOLDER)
    archive.unlink()
    return root / BATCHES_FOLDER


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays and plain containers: a crafted batch file cannot run code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise UserError(f"{path} is not a CIFAR-10 batch file ({error})") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise UserError(f"{path} is not a CIFAR-10 batch file (no 'data' and 'labels')")
    return batch


def _batch_arrays(paths: list[Path]) -> ArraySamples:
    images, labels = [], []
    for path in paths:
        batch = _read_batch(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{path}: expected rows of 3072 values, got an array of shape {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return ArraySamples(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def read_cifar10(folder: Path) -> tuple[ArraySamples, ArraySamples]:
    """Read a cifar-10-batches-py folder. Any copy in that layout loads: there is no md5 check here,
    only on what `download_cifar10` fetched."""
    train = _batch_arrays([folder / name for name in TRAIN_BATCHES])
    test = _batch_arrays([folder / "test_batch"])
    for split in (train, test):
        if split.labels.numel() and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < 10:
            raise UserError(f"{folder}: labels outside 0..9; is this CIFAR-100?")
    return train, test


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    from PIL import Image

    images = np.empty((len(offsets) - 1, 3, 32, 32), dtype=np.uint8)
    for index in range(len(offsets) - 1):
        data = blob[offsets[index] : offsets[index + 1]].tobytes()
        with Image.open(io.BytesIO(data)) as image:
            images[index] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    return torch.from_numpy(images)


def load_cifar10_sample() -> tuple[ArraySamples, ArraySamples]:
    """The CIFAR-10 sample bundled with the package: 500 train and 100 test images a class, stored
    as their original JPEG bytes (the same q75 JPEGs as the development copy, not re-encoded)."""
    with np.load(SAMPLE_FILE, allow_pickle=False) as sample:
        splits = tuple(
            ArraySamples(
                _decode_jpegs(sample[f"{split}_jpeg"], sample[f"{split}_offsets"]),
                torch.from_numpy(sample[f"{split}_labels"].astype(np.int64)),
            )
            for split in ("train", "test")
        )
    return splits[0], splits[1]


def load_cifar10(request: DataRequest) -> DataSplits:
    """A local copy at --data-dir (or in visionfit's cache), else the official download; when the
    user named no data at all and neither works, the bundled sample, after one line saying so."""
    try:
        return _cifar10(request.data_dir, request.download)
    except UserError as error:
        if not request.unnamed:
            raise
        request.notify(
            f"CIFAR-10 is not in {default_cifar10_root()} and could not be downloaded "
            f"({str(error).split(';')[0]}); training on the bundled cifar10-sample instead "
            "(use --dataset cifar10 --data-dir DIR for a local copy)"
        )
        return load_sample(request)


def _cifar10(data_dir: str | None, download: bool = True) -> DataSplits:
    root = Path(data_dir).expanduser() if data_dir else default_cifar10_root()
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-dir {root} is a file; point it at a folder")
    folder = find_cifar10(root)
    if folder is None and not download:
        raise UserError(f"CIFAR-10 is not in {root}; pass --data-dir DIR of a local copy")
    folder = folder or download_cifar10(root)
    train, test = read_cifar10(folder)
    description = f"CIFAR-10 from {folder} ({len(train)} train / {len(test)} test)"
    return DataSplits("cifar10", list(CIFAR10_CLASSES), train, test, description)


def load_sample(request: DataRequest) -> DataSplits:
    train, test = load_cifar10_sample()
    description = f"CIFAR-10 sample bundled with visionfit ({len(train)} train / {len(test)} test)"
    return DataSplits("cifar10-sample", list(CIFAR10_CLASSES), train, test, description)
