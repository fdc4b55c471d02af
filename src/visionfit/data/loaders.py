"""Per-sample datasets and DataLoaders with a data order and augmentation that depend only on
(seed, epoch, sample) — never on worker count, timing or where a run was resumed."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visionfit.data.cifar import ArraySamples
from visionfit.data.folder import FileSamples
from visionfit.data.images import open_rgb
from visionfit.distributed import shard

Samples = ArraySamples | FileSamples
Transform = Callable[[Any, random.Random | None], torch.Tensor]
_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch (splitmix64)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The order in which epoch `epoch` visits the samples: a function of (seed, epoch) only, shared
    by the per-sample loader and the memory path (and the one place to shard by rank)."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (sample index, augmentation seed) for one epoch at a time.

    The permutation of epoch e comes from a generator seeded with (seed, e), so any epoch can be
    replayed, and `set_epoch(e, start_batch=k)` continues a half-finished epoch at batch k.
    `batch_size` is the global batch: with several processes, each yields only its `rank`'s share
    of every batch (`distributed.shard`), so the data seen per step does not depend on their number.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # Dropping the ragged last batch keeps BatchNorm away from one-image batches, but an epoch
        # must keep at least one batch even for a dataset smaller than the batch size.
        self.drop_last = drop_last and num_samples >= batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        # A ragged last batch too small to give every process an image is dropped.
        ragged = self.num_samples % self.batch_size
        return self.num_samples // self.batch_size + (ragged >= self.world_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle).tolist()
        for batch in range(self.start_batch, self.batches_per_epoch()):
            indices = shard(
                order[batch * self.batch_size : (batch + 1) * self.batch_size], self.rank, self.world_size
            )
            yield [(index, sample_seed(self.seed, self.epoch, index)) for index in indices]


class SampleDataset(Dataset[tuple[torch.Tensor, int]]):
    """Reads one sample (an in-memory uint8 image or a file) and applies `transform`.

    A key may be a plain index or (index, seed); with a seed, the transform draws its random
    choices from `random.Random(seed)`, so augmentation never touches a process-wide RNG.
    """

    def __init__(self, samples: Samples, transform: Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[Any, int]:
        if isinstance(self.samples, ArraySamples):
            return self.samples.images[index], int(self.samples.labels[index])
        return open_rgb(self.samples.paths[index]), self.samples.labels[index]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.read(index)
        return self.transform(image, random.Random(seed) if seed is not None else None), label


def default_workers(device: torch.device, samples: Samples, processes: int = 1) -> int:
    """Loader processes: none for in-memory images on a CPU (workers would only compete with the
    model for the same cores), otherwise up to 8, leaving one core for the main process; the
    machine's cores are shared by the `processes` training processes running on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = max(1, cores // processes)
    if device.type == "cpu" and isinstance(samples, ArraySamples):
        return 0
    return max(0, min(8, cores - 1))


def _private_generator() -> torch.Generator:
    """A DataLoader draws a worker base seed from its generator every time it starts an epoch;
    with the default (torch's global RNG) that would make the model's own randomness (dropout)
    depend on how many epochs were started, which differs after a resume. Our augmentation is
    seeded per sample, so the workers' seeds do not matter: give them a generator of their own."""
    return torch.Generator().manual_seed(0)


def build_train_loader(
    samples: Samples,
    transform: Transform,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    device: torch.device,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader[Any], EpochBatchSampler]:
    sampler = EpochBatchSampler(
        len(samples),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
    )
    loader = DataLoader(
        SampleDataset(samples, transform),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=_private_generator(),
    )
    return loader, sampler


def build_eval_loader(
    samples: Samples,
    transform: Transform,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader[Any]:
    """Evaluation in file order; with several processes each takes its own share of the samples
    (no padding, so that every sample is counted exactly once when the sums are added up)."""
    return DataLoader(
        SampleDataset(samples, transform),
        batch_size=batch_size,
        sampler=shard(range(len(samples)), rank, world_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=_private_generator(),
    )
