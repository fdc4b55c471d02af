"""The batch stage of a run's training batches: a source's uint8 batches (from either data path)
moved to the device, augmented and normalised there (`TrainBatches`), and the preview grid of the
first augmented pictures.

`--data-path memory` keeps the whole dataset decoded on the device (`memory`); `loader` reads
pictures one by one in DataLoader workers (`loaders`). Both hand over uint8 batches with epoch
positions, so the batch stage (`augment`, `policies`) is one piece of code for both. Which steps a
run takes is read from its config in `engine.batches`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from visionfit.data.augment import CropAndFlip, Normalize
from visionfit.data.loaders import EpochBatchSampler
from visionfit.data.memory import MemoryBatches
from visionfit.data.order import sample_seed
from visionfit.data.policies import AutoAugment, LabelMixing, RandomErasing
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader, Preprocess, uses_padded_crops

# uint8 images, labels, and each sample's epoch position (training) or index (testing)
SourceBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BatchSteps:
    """The batch stage's steps in the order they run: random crop and flip (`augmentation`), an
    automatic augmentation `policy`, normalisation (during the first `low_res_epochs` epochs scaled
    down to `low_res_size`), random erasing, and mixing images and labels into soft targets; all
    but the normalisation optional."""

    normalize: Normalize
    augmentation: CropAndFlip | None = None
    policy: AutoAugment | None = None
    erasing: RandomErasing | None = None
    mixing: LabelMixing | None = None
    low_res_size: int | None = None
    low_res_epochs: int = 0


class TrainBatches:
    """Training batches for the loop: a source's uint8 batches moved to the device and passed
    through the batch stage's `steps`. Also the loop's sampler: `set_epoch`, `batches_per_epoch`."""

    def __init__(
        self,
        source: MemoryBatches | EpochBatchSampler,
        batches: Iterable[SourceBatch],
        steps: BatchSteps,
        device: torch.device,
    ) -> None:
        self.source = source
        self.batches = batches
        self.steps = steps
        self.normalize = steps.normalize
        self.device = device
        self.epoch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.source.set_epoch(epoch, start_batch)

    def batches_per_epoch(self) -> int:
        return self.source.batches_per_epoch()

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.steps
        size = steps.low_res_size if self.epoch <= steps.low_res_epochs else None
        non_blocking = self.device.type == "cuda"
        for step in (steps.augmentation, steps.policy, steps.erasing, steps.mixing):
            if step is not None:
                step.set_epoch(self.epoch)
        for images, labels, positions in self.batches:
            images = images.to(self.device, non_blocking=non_blocking)
            targets = labels.to(self.device, non_blocking=non_blocking)
            if steps.augmentation is not None:
                images = steps.augmentation(images, positions)
            if steps.policy is not None:
                images = steps.policy(images, positions)
            inputs = steps.normalize(images, size)
            if steps.erasing is not None:
                inputs = steps.erasing(inputs, positions)
            if steps.mixing is not None:
                inputs, targets = steps.mixing(inputs, targets, positions)
            yield inputs, targets


def picture_reader(preprocess: Preprocess, augment: bool) -> PictureReader:
    """Large pictures are cropped at random from the original when augmenting; small ones are
    resized, then padded and cropped a batch at a time."""
    return PictureReader(preprocess, random_crop=augment and not uses_padded_crops(preprocess))


def preview(
    samples: Samples, preprocess: Preprocess, *, augment: bool, seed: int, count: int
) -> torch.Tensor:
    """The first `count` training pictures, augmented as in epoch 0, as floats in [0, 1] (for a
    TensorBoard image grid)."""
    count = min(count, len(samples))
    reader = picture_reader(preprocess, augment)
    pictures = torch.stack(
        [reader(samples.picture(index), random.Random(sample_seed(seed, 0, index))) for index in range(count)]
    )
    if augment:
        augmentation = CropAndFlip(preprocess, seed=seed, count=count, device=pictures.device)
        augmentation.set_epoch(0)
        pictures = augmentation(pictures, torch.arange(count))
    return pictures.float() / 255
