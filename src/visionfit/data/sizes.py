"""How big a collection's pictures are, from a few file headers (no decoding, no torch): what the
defaults that follow the data need to tell CIFAR-sized pictures from photos."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from visionfit.data.folder import is_image_name

SAMPLED_FILES = 24
PER_FOLDER = 4  # a few from each folder, so that every class is seen early


def sample_files(root: Path, count: int = SAMPLED_FILES) -> list[Path]:
    """Up to `count` image files under `root` (its train/ when it has one), a few from each folder
    in name order, found without listing every folder of a large collection."""
    if (root / "train").is_dir():
        root = root / "train"
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        images = sorted(name for name in names if is_image_name(name))[:PER_FOLDER]
        found.extend(Path(folder) / name for name in images)
        if len(found) >= count:
            break
    return found[:count]


def typical_size(root: Path) -> tuple[int, int, int] | None:
    """The median shorter side of the sampled pictures and their median width and height, or None
    when none can be read."""
    from PIL import Image

    sizes = []
    for path in sample_files(root):
        try:
            with Image.open(path) as image:  # reads the header only
                sizes.append(image.size)
        except OSError:
            continue
    if not sizes:
        return None
    shorter = int(statistics.median(min(size) for size in sizes))
    width = int(statistics.median(size[0] for size in sizes))
    height = int(statistics.median(size[1] for size in sizes))
    return shorter, width, height
