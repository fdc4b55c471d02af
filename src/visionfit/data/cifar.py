"""The `cifar10` and `cifar10-sample` datasets: their declarations, and where a local copy is.
Reading, downloading and the bundled sample are `cifar_files`, imported only when a source loads
(`--help` reads these declarations)."""

from __future__ import annotations

from pathlib import Path

from visionfit.data.registry import register_dataset
from visionfit.paths import cache_dir

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


register_dataset(
    "cifar10",
    "visionfit.data.cifar_files:load_cifar10",
    description="CIFAR-10 (default; falls back to the bundled cifar10-sample when it is neither "
    "cached nor downloadable)",
    recognises=_is_cifar_folder,
    holds=BATCHES_FOLDER,
    recipe="fast",
)
register_dataset(
    "cifar10-sample",
    "visionfit.data.cifar_files:load_sample",
    description="the CIFAR-10 sample bundled with visionfit (5,000 train / 1,000 test images)",
    recipe="fast",
)
