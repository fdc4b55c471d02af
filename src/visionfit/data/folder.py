"""Image-folder datasets: ROOT/<class>/<images>, optionally split into ROOT/train and ROOT/val.
Registers the `folder` dataset (torch is imported inside the functions: `--help` reads the registry)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from visionfit.data.registry import DataRequest, DataSplits, register_dataset
from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.data.samples import FileSamples

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    """True for names with an image extension that are not hidden (like macOS's `._x.jpg`)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `root`: hidden folders (.git, .ipynb_checkpoints)
    are never classes."""
    return sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; follows symlinks once each."""
    found: list[Path] = []
    seen: set[str] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:  # a symlink loop, or two links to one folder
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif entry.is_file() and is_image_name(entry.name):
                    found.append(Path(entry.path))
            except OSError:
                continue
    return sorted(found)


def scan_classes(root: Path, classes: list[str] | None = None) -> tuple[list[str], FileSamples]:
    """Collect ROOT/<class>/**/<image> files. With `classes` given, folders must be among them."""
    from visionfit.data.samples import FileSamples

    found = class_folders(root)
    if not found:
        raise UserError(f"{root} has no class folders; expected {root}/<class name>/<images>")
    if classes is None:
        classes = found
    else:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise UserError(
                f"{root} has class folder(s) {', '.join(unknown)} that the training "
                f"split does not have ({', '.join(classes)})"
            )
    samples = FileSamples([], [])
    for name in found:
        files = _image_files(root / name)
        if not files:
            raise UserError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})"
                "; add images or remove the folder"
            )
        samples.paths.extend(files)
        samples.labels.extend([classes.index(name)] * len(files))
    return classes, samples


def stratified_split(
    samples: FileSamples, num_classes: int, fraction: float, seed: int
) -> tuple[FileSamples, FileSamples]:
    """Hold out `fraction` of every class (at least one image of classes with two or more)."""
    import torch

    from visionfit.data.samples import FileSamples

    generator = torch.Generator().manual_seed(seed)
    train, held_out = FileSamples([], []), FileSamples([], [])
    for label in range(num_classes):
        members = [index for index, value in enumerate(samples.labels) if value == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = round(len(members) * fraction)
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        for position, member in enumerate(order):
            target = held_out if position < count else train
            target.paths.append(samples.paths[members[member]])
            target.labels.append(label)
    return train, held_out


def find_split_folders(root: Path) -> tuple[Path, Path] | None:
    """ROOT/train plus ROOT/val (preferred) or ROOT/test, when the dataset comes pre-split."""
    if not (root / "train").is_dir():
        return None
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / "train", root / name
    return None


def load_folder(
    root: Path, test_fraction: float, seed: int
) -> tuple[list[str], FileSamples, FileSamples, str]:
    """Read a folder dataset; returns classes, train and test samples, and a description."""
    if not root.exists():
        raise UserError(f"--data-dir {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a folder")
    splits = find_split_folders(root)
    if splits is not None:
        train_dir, test_dir = splits
        classes, train = scan_classes(train_dir)
        _, test = scan_classes(test_dir, classes)
        return classes, train, test, f"{train_dir.name}/ and {test_dir.name}/ folders of {root}"
    classes, everything = scan_classes(root)
    train, test = stratified_split(everything, len(classes), test_fraction, seed)
    if len(test) == 0:
        raise UserError(
            f"{root} has too few images to hold any out for testing; add images, "
            "or create train/ and val/ sub-folders"
        )
    return classes, train, test, f"{root}, {test_fraction:g} of each class held out (seed {seed})"


def load_folder_dataset(request: DataRequest) -> DataSplits:
    assert request.data_dir is not None  # needs_data_dir
    root = Path(request.data_dir).expanduser()
    if all((root / name).is_dir() for name in ("train", "val", "test")):
        return load_three_folders(root)
    classes, train, test, where = load_folder(root, request.test_fraction, request.seed)
    description = f"{len(classes)} classes from {where} ({len(train)} train / {len(test)} test)"
    return DataSplits("folder", classes, train, test, description)


def load_three_folders(root: Path) -> DataSplits:
    """ROOT/train, ROOT/val and ROOT/test: training, validation (best, early stopping) and test
    (measured once, at the end)."""
    classes, train = scan_classes(root / "train")
    _, val = scan_classes(root / "val", classes)
    _, test = scan_classes(root / "test", classes)
    description = (
        f"{len(classes)} classes from train/, val/ and test/ folders of {root} "
        f"({len(train)} train / {len(val)} val / {len(test)} test)"
    )
    return DataSplits("folder", classes, train, test, description, val=val)


register_dataset(
    "folder",
    load_folder_dataset,
    description="your images, ROOT/<class>/<images> (or ROOT/train and ROOT/val as the test split, or "
    "ROOT/train, ROOT/val and ROOT/test)",
    needs_data_dir="ROOT, where ROOT/<class>/ holds the images",
    recognises=lambda path: bool(class_folders(path)),
    holds="class folders",
)
