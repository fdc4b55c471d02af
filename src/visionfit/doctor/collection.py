"""The dataset as doctor sees it: every picture of every split as one item with its split, name,
file (if it has one) and label. A thin adapter over `data.registry.DataSplits`, so doctor reads
whatever train reads (CIFAR-10 in memory, image folders, label files once they exist)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from visionfit.data.registry import DataSplits
    from visionfit.data.samples import Samples


@dataclass
class Collection:
    """Every picture of the dataset, split by split, as parallel lists (one entry per item)."""

    classes: list[str]
    splits: list[str]  # the split each item is in: "train" or "test"
    positions: list[int]  # its index within that split's samples
    paths: list[Path | None]  # its file, absolute; None for pictures held in memory
    labels: np.ndarray  # its given class index (int64)
    samples: dict[str, Samples]

    def __len__(self) -> int:
        return len(self.splits)

    def name(self, item: int) -> str:
        """The file of an item, or `split#position` for a picture held in memory."""
        path = self.paths[item]
        return str(path) if path is not None else f"{self.splits[item]}#{self.positions[item]}"

    def picture(self, item: int) -> Image.Image:
        """The item as an RGB image (raises on an unreadable file)."""
        picture = self.samples[self.splits[item]].picture(self.positions[item])
        if isinstance(picture, Image.Image):
            return picture
        return Image.fromarray(picture.permute(1, 2, 0).numpy())

    def label_name(self, item: int) -> str:
        return self.classes[int(self.labels[item])]

    def items_of(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def collect(data: DataSplits) -> Collection:
    """One `Collection` of the train and test samples of `data`."""
    splits: list[str] = []
    positions: list[int] = []
    paths: list[Path | None] = []
    labels: list[np.ndarray] = []
    for split, samples in (("train", data.train), ("test", data.test)):
        files = samples.files()
        count = len(samples)
        splits += [split] * count
        positions += list(range(count))
        paths += [Path(os.path.abspath(path)) for path in files] if files else [None] * count
        labels.append(samples.label_tensor().numpy().astype(np.int64))
    return Collection(
        list(data.classes),
        splits,
        positions,
        paths,
        np.concatenate(labels),
        {"train": data.train, "test": data.test},
    )
