"""A run's batches: the training batches the loop consumes (augmented and normalised on the
device) and the uint8 test batches the evaluation reads, from either data path.

`--data-path memory` keeps the whole dataset decoded on the device (`memory`); `loader` reads
pictures one by one in DataLoader workers (`loaders`). Both hand over uint8 batches with epoch
positions, so the batch stage (`augment`) is one piece of code for both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from visionfit.config.validation import low_res_side
from visionfit.data.augment import CropAndFlip, Normalize
from visionfit.data.loaders import EpochBatchSampler, default_workers, eval_loader, train_loader
from visionfit.data.memory import MemoryBatches, MemoryTestBatches
from visionfit.data.order import sample_seed
from visionfit.data.policies import AutoAugment, LabelMixing, RandomErasing
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader, Preprocess, uses_padded_crops
from visionfit.distributed import local_world_size

if TYPE_CHECKING:
    from visionfit.config import TrainConfig
    from visionfit.data.registry import DataSplits
    from visionfit.runtime import Runtime

# uint8 images, labels, and each sample's epoch position (training) or index (testing)
SourceBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TrainBatches:
    """Training batches for the loop: a source's uint8 batches moved to the device, randomly cropped
    and flipped (`augmentation`), passed through an automatic augmentation `policy`, normalised,
    during the first `low_res_epochs` epochs scaled down to `low_res_size`, randomly erased
    (`erasing`), and mixed with their labels into soft targets (`mixing`); each step is optional.
    Also the loop's sampler: `set_epoch`, `batches_per_epoch`."""

    def __init__(
        self,
        source: MemoryBatches | EpochBatchSampler,
        batches: Iterable[SourceBatch],
        augmentation: CropAndFlip | None,
        normalize: Normalize,
        device: torch.device,
        *,
        low_res_size: int | None = None,
        low_res_epochs: int = 0,
        policy: AutoAugment | None = None,
        erasing: RandomErasing | None = None,
        mixing: LabelMixing | None = None,
    ) -> None:
        self.source = source
        self.batches = batches
        self.augmentation = augmentation
        self.normalize = normalize
        self.device = device
        self.low_res_size = low_res_size
        self.low_res_epochs = low_res_epochs
        self.policy = policy
        self.erasing = erasing
        self.mixing = mixing
        self.epoch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.source.set_epoch(epoch, start_batch)

    def batches_per_epoch(self) -> int:
        return self.source.batches_per_epoch()

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.low_res_size if self.epoch <= self.low_res_epochs else None
        non_blocking = self.device.type == "cuda"
        for step in (self.augmentation, self.policy, self.erasing, self.mixing):
            if step is not None:
                step.set_epoch(self.epoch)
        for images, labels, positions in self.batches:
            images = images.to(self.device, non_blocking=non_blocking)
            targets = labels.to(self.device, non_blocking=non_blocking)
            if self.augmentation is not None:
                images = self.augmentation(images, positions)
            if self.policy is not None:
                images = self.policy(images, positions)
            inputs = self.normalize(images, size)
            if self.erasing is not None:
                inputs = self.erasing(inputs, positions)
            if self.mixing is not None:
                inputs, targets = self.mixing(inputs, targets, positions)
            yield inputs, targets


def picture_reader(preprocess: Preprocess, augment: bool) -> PictureReader:
    """Large pictures are cropped at random from the original when augmenting; small ones are
    resized, then padded and cropped a batch at a time."""
    return PictureReader(preprocess, random_crop=augment and not uses_padded_crops(preprocess))


def create_batches(
    config: TrainConfig,
    runtime: Runtime,
    data: DataSplits,
    preprocess: Preprocess,
    data_path: str,
    notify: Callable[[str], None],
) -> tuple[TrainBatches, Iterable[SourceBatch]]:
    """The training batches and the test batches on `data_path` ("memory" or "loader",
    `memory.choose_data_path`)."""
    augmentation = None
    if config.augment:
        augmentation = CropAndFlip(preprocess, seed=config.seed, count=len(data.train), device=runtime.device)
    padding = augmentation.padding if augmentation is not None else 0
    if data_path == "memory":
        source, batches, test = _memory_batches(config, runtime, data, preprocess, padding, notify)
    else:
        source, batches, test = _loader_batches(config, runtime, data, preprocess)
    normalize = Normalize(preprocess, runtime.device, runtime.channels_last)
    low_res_size = low_res_side(config, preprocess.input_size)
    train = TrainBatches(
        source,
        batches,
        augmentation,
        normalize,
        runtime.device,
        low_res_size=low_res_size,
        low_res_epochs=config.low_res_epochs,
        **optional_augmentations(config, len(data.classes)),
    )
    return train, test


def optional_augmentations(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The steps --auto-augment, --random-erasing, --mixup and --cutmix ask for (None when off)."""
    steps: dict[str, Any] = {"policy": None, "erasing": None, "mixing": None}
    if config.auto_augment not in (None, "none"):
        steps["policy"] = AutoAugment(config.auto_augment, seed=config.seed)
    if config.random_erasing > 0:
        steps["erasing"] = RandomErasing(config.random_erasing, seed=config.seed)
    if config.mixup > 0 or config.cutmix > 0:
        steps["mixing"] = LabelMixing(
            mixup=config.mixup, cutmix=config.cutmix, num_classes=num_classes, seed=config.seed
        )
    return steps


def _order(config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """How an epoch walks the training samples: the global batch, shuffling, seed, ragged last
    batch, and this process's share."""
    return {
        "batch_size": config.batch_size,
        "shuffle": config.shuffle,
        "seed": config.seed,
        "drop_last": config.drop_last,
        "rank": runtime.rank,
        "world_size": runtime.world_size,
    }


def _test_batch_size(config: TrainConfig, runtime: Runtime) -> int:
    return max(1, config.test_batch_size // runtime.world_size)  # a global size, like --batch-size


def _memory_batches(
    config: TrainConfig,
    runtime: Runtime,
    data: DataSplits,
    preprocess: Preprocess,
    padding: int,
    notify: Callable[[str], None],
) -> tuple[MemoryBatches, MemoryBatches, MemoryTestBatches]:
    images = data.train.images_at(preprocess, notify)
    device = runtime.device
    source = MemoryBatches(
        images, data.train.label_tensor(), device=device, padding=padding, **_order(config, runtime)
    )
    test = MemoryTestBatches(
        data.test.images_at(preprocess, notify),
        data.test.label_tensor(),
        batch_size=_test_batch_size(config, runtime),
        device=device,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    return source, source, test


def _loader_batches(
    config: TrainConfig, runtime: Runtime, data: DataSplits, preprocess: Preprocess
) -> tuple[EpochBatchSampler, Iterable[SourceBatch], Iterable[SourceBatch]]:
    device = runtime.device
    workers = config.workers
    if workers is None:
        workers = default_workers(device, data.train, local_world_size())
    source = EpochBatchSampler(len(data.train), **_order(config, runtime))
    reader = picture_reader(preprocess, config.augment)
    batches = train_loader(data.train, reader, source, workers=workers, device=device)
    test = eval_loader(
        data.test,
        PictureReader(preprocess),
        batch_size=_test_batch_size(config, runtime),
        workers=workers,
        device=device,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    return source, batches, test


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
