"""The `cifar10` and `cifar10-sample` datasets: where a local copy is, and loading it, the
official download, or the sample bundled with the package (`cifar_files` reads and fetches the
files; it is imported when a source loads, since `--help` reads this registry entry)."""

from __future__ import annotations

from pathlib import Path

from visionfit.data.registry import DataRequest, DataSplits, register_dataset
from visionfit.errors import UserError
from visionfit.paths import cache_dir

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))


def default_cifar10_root() -> Path:
    return cache_dir() / "cifar10"


def is_batches_folder(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*TRAIN_BATCHES, "test_batch"))


def find_cifar10(data_dir: Path) -> Path | None:
    """The cifar-10-batches-py folder at `data_dir` or directly inside it, if there is one."""
    for candidate in (data_dir, data_dir / BATCHES_FOLDER):
        if is_batches_folder(candidate):
            return candidate
    return None


def _is_cifar_folder(path: Path) -> bool:
    return find_cifar10(path) is not None


@register_dataset(
    "cifar10",
    description="CIFAR-10 (default; falls back to the bundled cifar10-sample when it is neither "
    "cached nor downloadable)",
    recognises=_is_cifar_folder,
    holds=BATCHES_FOLDER,
    recipe="fast",
)
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
    from visionfit.data.cifar_files import download_cifar10, read_cifar10

    folder = find_cifar10(root)
    if folder is None and not download:
        raise UserError(f"CIFAR-10 is not in {root}; pass --data-dir DIR of a local copy")
    folder = folder or download_cifar10(root)
    train, test = read_cifar10(folder)
    description = f"CIFAR-10 from {folder} ({len(train)} train / {len(test)} test)"
    return DataSplits("cifar10", list(CIFAR10_CLASSES), train, test, description)


@register_dataset(
    "cifar10-sample",
    description="the CIFAR-10 sample bundled with visionfit (5,000 train / 1,000 test images)",
    recipe="fast",
)
def load_sample(request: DataRequest) -> DataSplits:
    from visionfit.data.cifar_files import load_cifar10_sample

    train, test = load_cifar10_sample()
    description = f"CIFAR-10 sample bundled with visionfit ({len(train)} train / {len(test)} test)"
    return DataSplits("cifar10-sample", list(CIFAR10_CLASSES), train, test, description)
