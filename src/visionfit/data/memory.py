"""The fast data path: a whole dataset as one uint8 tensor on the training device.

Decoding a picture with PIL and resizing it one sample at a time costs more than the tutorial
network's own forward and backward pass on a CPU. Small-image datasets fit in memory many times
over (CIFAR-10's 50,000 images are 150 MB as uint8), so they are decoded once — from the batch
files, or from the image files into a cache (`decoded`) — and each batch is cut from that tensor by
indexing, in the same order and with the same positions as the per-sample loader's batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from visionfit.data.order import EpochOrder, FollowsOrder, shard
from visionfit.data.samples import Samples
from visionfit.data.transforms import SMALL_IMAGE_SIDE, Preprocess
from visionfit.errors import UserError

# Above this many bytes of decoded uint8 images (train and test together), --data-path auto keeps
# the per-sample loader: the memory path should never be what pushes a machine into swap.
MEMORY_BUDGET_BYTES = 2 * 1024**3


def memory_bytes(num_images: int, preprocess: Preprocess) -> int:
    return num_images * 3 * preprocess.input_size**2


def memory_path_problem(train: Samples, test: Samples, preprocess: Preprocess) -> str | None:
    """Why these data cannot take the memory path, or None when they can."""
    if preprocess.input_size > SMALL_IMAGE_SIDE:
        return (
            f"input size {preprocess.input_size} is above {SMALL_IMAGE_SIDE}: large pictures are "
            "augmented by random resized crops of the original, which the per-sample loader does"
        )
    needed = memory_bytes(len(train) + len(test), preprocess)
    if needed > MEMORY_BUDGET_BYTES:
        budget = MEMORY_BUDGET_BYTES / 1024**3
        return f"the decoded images need {needed / 1024**3:.1f} GiB, more than the {budget:g} GiB budget"
    return None


def choose_data_path(requested: str, train: Samples, test: Samples, preprocess: Preprocess) -> str:
    """ "memory" or "loader" for --data-path `requested` (auto, memory or loader)."""
    if requested == "loader":
        return "loader"
    problem = memory_path_problem(train, test, preprocess)
    if problem is None:
        return "memory"
    if requested == "memory":
        raise UserError(f"--data-path memory: {problem}; use --data-path loader (or auto)")
    return "loader"


class MemoryBatches(FollowsOrder):
    """uint8 batches `(images, labels, positions)` cut from images held on the device, in the
    `order`'s walk (whose `batch_size` is the global batch: each process takes its share of it).

    `padding` > 0 stores the images reflect-padded by that much, once, for the batch stage's
    random crops: a third more memory, a third less work a step than padding every batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        order: EpochOrder,
        *,
        device: torch.device,
        padding: int = 0,
    ) -> None:
        from visionfit.data.augment import reflect_pad

        self.images = (reflect_pad(images, padding) if padding else images).to(device)
        self.labels = labels.to(device)
        self.order = order
        self.device = device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for indices, positions in self.order:
            indices = indices.to(self.device)
            yield self.images[indices], self.labels[indices], positions.to(self.device)


class MemoryTestBatches:
    """uint8 test batches `(images, labels, indices)` in stored order. Each process takes every
    world_size-th image, without padding: summed over the processes, every image counts once."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.indices = shard(torch.arange(len(labels)), rank, world_size)
        self.images = shard(images, rank, world_size).to(device)
        self.labels = shard(labels, rank, world_size).to(device)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            end = start + self.batch_size
            yield self.images[start:end], self.labels[start:end], self.indices[start:end]
