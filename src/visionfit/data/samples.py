"""What a dataset hands to training and evaluation: the `Samples` protocol, and its two kinds —
images already in memory (CIFAR-10's batch files, the bundled sample) and image files on disk.

Everything downstream (the loaders, the memory path, the pre-training decode check, the mistakes
grid) asks a `Samples` what it needs through these methods, so a new kind of source implements
them and touches nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from visionfit.data.images import open_rgb

if TYPE_CHECKING:
    from PIL import Image

    from visionfit.data.transforms import Preprocess


class Samples(Protocol):
    """Labelled pictures of one split."""

    # Whether the pictures are already decoded in memory (no loader processes needed to read them).
    in_memory: ClassVar[bool]
    # Whether consecutive samples share a class (files listed class by class): unshuffled training
    # on such samples learns one class after another.
    in_class_order: ClassVar[bool]

    def __len__(self) -> int: ...

    def label_tensor(self) -> torch.Tensor:
        """Every sample's class index, int64."""
        ...

    def picture(self, index: int) -> Image.Image | torch.Tensor:
        """Sample `index` as an RGB PIL image or a uint8 (3, H, W) tensor."""
        ...

    def name(self, index: int) -> str:
        """How to show sample `index` to a person: its path, or `#index`."""
        ...

    def files(self) -> list[Path]:
        """The image files behind the samples (none for pictures held in memory)."""
        ...

    def image_side(self) -> int | None:
        """The side of every picture when all are the same square size, else None."""
        ...

    def images_at(self, preprocess: Preprocess, notify: Callable[[str], None]) -> torch.Tensor:
        """All pictures as one uint8 (N, 3, S, S) tensor at the input size, resized exactly as the
        evaluation transform resizes them."""
        ...

    def without(self, bad: set[Path]) -> Samples:
        """These samples minus the files in `bad` (class indices unchanged)."""
        ...

    def subset(self, indices: list[int]) -> Samples:
        """The samples at `indices`, in that order (a validation split held out of train)."""
        ...


@dataclass
class ArraySamples:
    """Images held in memory as one uint8 tensor (N, 3, H, W) with int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    in_memory: ClassVar[bool] = True
    in_class_order: ClassVar[bool] = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def label_tensor(self) -> torch.Tensor:
        return self.labels.to(torch.int64)

    def picture(self, index: int) -> torch.Tensor:
        return self.images[index]

    def name(self, index: int) -> str:
        return f"#{index}"

    def files(self) -> list[Path]:
        return []

    def image_side(self) -> int | None:
        height, width = self.images.shape[-2:]
        return int(width) if height == width else None

    def images_at(self, preprocess: Preprocess, notify: Callable[[str], None]) -> torch.Tensor:
        if tuple(self.images.shape[-2:]) == (preprocess.input_size, preprocess.input_size):
            return self.images
        from visionfit.data.transforms import resize_picture

        return torch.stack([resize_picture(image, preprocess) for image in self.images])

    def without(self, bad: set[Path]) -> ArraySamples:
        return self

    def subset(self, indices: list[int]) -> ArraySamples:
        chosen = torch.tensor(indices, dtype=torch.int64)
        return ArraySamples(self.images[chosen], self.labels[chosen])


class _ImageFiles:
    """What samples read from image files share: each picture is opened when asked for."""

    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def picture(self, index: int) -> Image.Image:
        return open_rgb(self.paths[index])

    def name(self, index: int) -> str:
        return str(self.paths[index])

    def files(self) -> list[Path]:
        return list(self.paths)

    def image_side(self) -> int | None:
        return None


@dataclass
class FileSamples(_ImageFiles):
    """Image files and their class indices, listed class by class."""

    paths: list[Path]
    labels: list[int]
    in_memory: ClassVar[bool] = False
    in_class_order: ClassVar[bool] = True

    def label_tensor(self) -> torch.Tensor:
        return torch.tensor(self.labels, dtype=torch.int64)

    def images_at(self, preprocess: Preprocess, notify: Callable[[str], None]) -> torch.Tensor:
        from visionfit.data.decoded import decoded_images

        return decoded_images(self.paths, self.labels, preprocess, notify)

    def without(self, bad: set[Path]) -> FileSamples:
        kept = [(path, label) for path, label in zip(self.paths, self.labels, strict=True) if path not in bad]
        return FileSamples([path for path, _ in kept], [label for _, label in kept])

    def subset(self, indices: list[int]) -> FileSamples:
        return FileSamples(
            [self.paths[index] for index in indices], [self.labels[index] for index in indices]
        )


@dataclass
class MultiLabelSamples(_ImageFiles):
    """Image files, each with a set of class indices (several labels per image); `label_tensor` is
    the (N, C) 0/1 float matrix that binary cross-entropy trains on."""

    paths: list[Path]
    targets: list[tuple[int, ...]]
    num_classes: int
    in_memory: ClassVar[bool] = False
    in_class_order: ClassVar[bool] = False

    def label_tensor(self) -> torch.Tensor:
        matrix = torch.zeros((len(self.paths), self.num_classes), dtype=torch.float32)
        for row, classes in enumerate(self.targets):
            matrix[row, list(classes)] = 1.0
        return matrix

    def images_at(self, preprocess: Preprocess, notify: Callable[[str], None]) -> torch.Tensor:
        from visionfit.data.decoded import decoded_images

        keys = ["+".join(map(str, classes)) for classes in self.targets]  # labels only key the cache
        return decoded_images(self.paths, keys, preprocess, notify)  # type: ignore[arg-type]

    def without(self, bad: set[Path]) -> MultiLabelSamples:
        kept = [
            (path, classes) for path, classes in zip(self.paths, self.targets, strict=True) if path not in bad
        ]
        return MultiLabelSamples(
            [path for path, _ in kept], [classes for _, classes in kept], self.num_classes
        )

    def random_split(self, fraction: float, seed: int) -> tuple[MultiLabelSamples, MultiLabelSamples]:
        """(kept, held out): a seeded random `fraction` held out (at least one when there are two)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        count = min(max(round(len(self) * fraction), 1), len(self) - 1) if len(self) >= 2 else 0
        held, kept = sorted(order[:count]), sorted(order[count:])
        return self.subset(kept), self.subset(held)

    def subset(self, indices: list[int]) -> MultiLabelSamples:
        """The samples at `indices`, in that order."""
        return MultiLabelSamples(
            [self.paths[index] for index in indices],
            [self.targets[index] for index in indices],
            self.num_classes,
        )
