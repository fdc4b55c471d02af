"""A run's batches, read from its finished config: the training batches the loop consumes and the
uint8 test batches the evaluation reads, on the data path the run chose.

This is where the config meets the data package: `data/` knows epoch orders, sources and batch
steps, and nothing of the config or the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from visionfit.config import TrainConfig
from visionfit.config.validation import low_res_side
from visionfit.data.augment import CropAndFlip, Normalize
from visionfit.data.batches import BatchSteps, SourceBatch, TrainBatches, picture_reader
from visionfit.data.loaders import EpochBatchSampler, default_workers, eval_loader, train_loader
from visionfit.data.memory import MemoryBatches, MemoryTestBatches
from visionfit.data.order import EpochOrder, balanced_weights, shard
from visionfit.data.policies import AutoAugment, LabelMixing, RandomErasing
from visionfit.data.registry import DataSplits
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.distributed import local_world_size
from visionfit.runtime import Runtime


@dataclass(frozen=True)
class RunData:
    """What a run's batches are made of: its finished config, the runtime, the data, the
    preprocessing, the data path ("memory" or "loader", `memory.choose_data_path`) and where
    one-line messages go."""

    config: TrainConfig
    runtime: Runtime
    data: DataSplits
    preprocess: Preprocess
    data_path: str
    notify: Callable[[str], None]

    def training_order(self) -> EpochOrder:
        """How each epoch walks the training samples: the global batch, shuffling (or --sampler
        balanced's draw), seed, ragged last batch, and this process's share."""
        config, runtime = self.config, self.runtime
        balanced = config.sampler == "balanced"
        return EpochOrder(
            len(self.data.train),
            config.batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
            drop_last=config.drop_last,
            rank=runtime.rank,
            world_size=runtime.world_size,
            weights=balanced_weights(self.data.train.label_tensor()) if balanced else None,
        )


@dataclass(frozen=True)
class BatchChoice:
    """How a set of batches differs from the run's own training batches (the feature cache reads
    the pictures in sample order, one view at a time): another `order`, augmentation on or off,
    no low-resolution epochs, another global test batch."""

    order: EpochOrder | None = None
    augment: bool | None = None
    low_res: bool = True
    test_batch_size: int | None = None


def create_batches(
    run: RunData, choice: BatchChoice = BatchChoice()
) -> tuple[TrainBatches, Iterable[SourceBatch]]:
    """The training batches and the test batches of `run` (as `choice` changes them)."""
    config, runtime, preprocess = run.config, run.runtime, run.preprocess
    augment = config.augment if choice.augment is None else choice.augment
    order = choice.order if choice.order is not None else run.training_order()
    test_batch_size = max(1, (choice.test_batch_size or config.test_batch_size) // runtime.world_size)
    augmentation = None
    if augment:
        augmentation = CropAndFlip(
            preprocess, seed=config.seed, count=len(run.data.train), device=runtime.device
        )
    if run.data_path == "memory":
        padding = augmentation.padding if augmentation is not None else 0
        source, batches, test = _memory_batches(run, order, padding, test_batch_size)
    else:
        source, batches, test = _loader_batches(run, order, augment, test_batch_size)
    steps = BatchSteps(
        Normalize(preprocess, runtime.device, runtime.channels_last),
        augmentation,
        low_res_size=low_res_side(config, preprocess.input_size) if choice.low_res else None,
        low_res_epochs=config.low_res_epochs if choice.low_res else 0,
        **optional_augmentations(config, len(run.data.classes)),
    )
    return TrainBatches(source, batches, steps, runtime.device), test


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


def _memory_batches(
    run: RunData, order: EpochOrder, padding: int, test_batch_size: int
) -> tuple[MemoryBatches, MemoryBatches, MemoryTestBatches]:
    data, device, runtime = run.data, run.runtime.device, run.runtime
    images = data.train.images_at(run.preprocess, run.notify)
    source = MemoryBatches(images, data.train.label_tensor(), order, device=device, padding=padding)
    test = MemoryTestBatches(
        data.test.images_at(run.preprocess, run.notify),
        data.test.label_tensor(),
        batch_size=test_batch_size,
        device=device,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    return source, source, test


def _loader_batches(
    run: RunData, order: EpochOrder, augment: bool, test_batch_size: int
) -> tuple[EpochBatchSampler, Iterable[SourceBatch], Iterable[SourceBatch]]:
    data, device, runtime = run.data, run.runtime.device, run.runtime
    workers = run.config.workers
    if workers is None:
        workers = default_workers(device, data.train, local_world_size())
    source = EpochBatchSampler(order)
    batches = train_loader(
        data.train, picture_reader(run.preprocess, augment), source, workers=workers, device=device
    )
    test = eval_loader(
        data.test,
        PictureReader(run.preprocess),
        batch_size=test_batch_size,
        workers=workers,
        device=device,
        indices=shard(range(len(data.test)), runtime.rank, runtime.world_size),
    )
    return source, batches, test
