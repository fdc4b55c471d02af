"""Datasets: which images, which classes, which split. `load_data` is the one entry point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visionfit.data.cifar import (
    CIFAR10_CLASSES,
    ArraySamples,
    default_cifar10_root,
    download_cifar10,
    find_cifar10,
    load_cifar10_sample,
    read_cifar10,
)
from visionfit.data.folder import FileSamples, class_folders, load_folder
from visionfit.errors import UserError

Samples = ArraySamples | FileSamples

__all__ = ["ArraySamples", "DataSplits", "FileSamples", "Samples", "load_data"]


@dataclass
class DataSplits:
    """The classes and the train and test samples of one dataset."""

    dataset: str
    classes: list[str]
    train: Samples
    test: Samples
    description: str

    @property
    def image_side(self) -> int | None:
        """The side of the (square, uniform) in-memory images, if the dataset has one."""
        if isinstance(self.train, ArraySamples):
            height, width = self.train.images.shape[-2:]
            return int(width) if height == width else None
        return None


def _cifar10(data_dir: str | None) -> DataSplits:
    root = Path(data_dir).expanduser() if data_dir else default_cifar10_root()
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-dir {root} is a file; point it at a folder")
    folder = find_cifar10(root) or download_cifar10(root)
    train, test = read_cifar10(folder)
    return DataSplits(
        "cifar10",
        list(CIFAR10_CLASSES),
        train,
        test,
        f"CIFAR-10 from {folder} ({len(train)} train / {len(test)} test)",
    )


def _cifar10_sample() -> DataSplits:
    train, test = load_cifar10_sample()
    return DataSplits(
        "cifar10-sample",
        list(CIFAR10_CLASSES),
        train,
        test,
        f"CIFAR-10 sample bundled with visionfit ({len(train)} train / {len(test)} test)",
    )


def _folder(data_dir: str, val_fraction: float, seed: int) -> DataSplits:
    classes, train, test, where = load_folder(Path(data_dir).expanduser(), val_fraction, seed)
    return DataSplits(
        "folder",
        classes,
        train,
        test,
        f"{len(classes)} classes from {where} ({len(train)} train / {len(test)} test)",
    )


def _looks_like_image_folder(path: Path) -> bool:
    return path.is_dir() and find_cifar10(path) is None and bool(class_folders(path))


def load_data(
    dataset: str | None,
    data_dir: str | None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    notify: Callable[[str], None] = print,
) -> DataSplits:
    """Load a dataset by name.

    `dataset=None` means CIFAR-10 with two conveniences: a `data_dir` that holds class folders is
    read as a folder dataset, and without a usable CIFAR-10 (not cached, no network) training goes
    on with the bundled sample after one line through `notify`.
    """
    if dataset == "cifar10":
        return _cifar10(data_dir)
    if dataset == "cifar10-sample":
        return _cifar10_sample()
    if dataset == "folder":
        if not data_dir:
            raise UserError("--dataset folder needs --data-dir ROOT, where ROOT/<class>/ holds the images")
        return _folder(data_dir, val_fraction, seed)
    if dataset is not None:
        raise UserError(f"unknown dataset {dataset!r}; choose cifar10, cifar10-sample or folder")
    if data_dir and _looks_like_image_folder(Path(data_dir).expanduser()):
        notify(f"{data_dir} holds class folders: reading it as --dataset folder")
        return _folder(data_dir, val_fraction, seed)
    if data_dir:
        return _cifar10(data_dir)
    try:
        return _cifar10(None)
    except UserError as error:
        notify(
            f"CIFAR-10 is not in {default_cifar10_root()} and could not be downloaded "
            f"({str(error).split(';')[0]}); training on the bundled cifar10-sample instead "
            "(use --dataset cifar10 --data-dir DIR for a local copy)"
        )
        return _cifar10_sample()
