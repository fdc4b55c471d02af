"""The dataset as doctor sees it: every picture of every split (train, val, test) as one item with
its split, name, file (if it has one) and label(s). A thin adapter over `data.registry.DataSplits`,
so doctor reads whatever train reads (CIFAR-10 in memory, image folders, label files with one or
several labels per image)."""

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

LABEL_SET_SEPARATOR = ";"  # how a set of labels is written in issues.csv, report.json and grids


@dataclass
class Collection:
    """Every picture of the dataset, split by split, as parallel lists (one entry per item)."""

    classes: list[str]
    splits: list[str]  # the split each item is in: "train", "val" or "test"
    positions: list[int]  # its index within that split's samples
    paths: list[Path | None]  # its file, absolute; None for pictures held in memory
    # Its given class index (int64, one per item), or for multi-label data its set of classes as a
    # (items, classes) 0/1 matrix (int64).
    labels: np.ndarray
    samples: dict[str, Samples]

    def __len__(self) -> int:
        return len(self.splits)

    @property
    def multilabel(self) -> bool:
        """Whether each item has a set of labels (a multi-label label file)."""
        return self.labels.ndim == 2

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
        """The item's class, or its set of classes written "a;b" (multi-label)."""
        if self.multilabel:
            return self.set_name(np.flatnonzero(self.labels[item]))
        return self.classes[int(self.labels[item])]

    def set_name(self, classes: np.ndarray | list[int] | tuple[int, ...]) -> str:
        """A set of class indices as "a;b" (in class order), "(none)" when empty."""
        names = [self.classes[int(index)] for index in sorted(classes)]
        return LABEL_SET_SEPARATOR.join(names) if names else "(none)"

    def label_text(self, label: int | tuple[int, ...]) -> str:
        """A class index as its name, a set of them as "a;b" (a suggested label)."""
        return self.set_name(label) if isinstance(label, tuple) else self.classes[label]

    def same_labels(self, first: int, second: int) -> bool:
        """Whether two items carry the same label (the same set, multi-label)."""
        return bool(np.array_equal(self.labels[first], self.labels[second]))

    def items_of(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def named_splits(data: DataSplits) -> list[tuple[str, Samples]]:
    """Every split the data have, by its name: the held-out split in the `test` place is validation
    data when `data.validation` says so (a label file's val rows or its share of train); a label
    file's test rows set aside behind its val rows are the test split."""
    splits = [("train", data.train)]
    if data.val is not None:
        splits.append(("val", data.val))
    splits.append(("val" if data.validation and data.val is None else "test", data.test))
    if data.set_aside is not None:
        splits.append(("test", data.set_aside))
    return splits


def collect(data: DataSplits) -> Collection:
    """One `Collection` of every split of `data` (train, then val, then test)."""
    splits: list[str] = []
    positions: list[int] = []
    paths: list[Path | None] = []
    labels: list[np.ndarray] = []
    samples: dict[str, Samples] = {}
    for split, members in named_splits(data):
        files = members.files()
        count = len(members)
        splits += [split] * count
        positions += list(range(count))
        paths += [Path(os.path.abspath(path)) for path in files] if files else [None] * count
        # int64 either way: class indices, or a multi-label split's 0/1 matrix.
        labels.append(members.label_tensor().numpy().astype(np.int64))
        samples[split] = members
    return Collection(list(data.classes), splits, positions, paths, np.concatenate(labels), samples)
