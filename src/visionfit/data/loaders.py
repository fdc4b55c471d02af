"""The per-sample data path: a `DataLoader` that reads and resizes one picture at a time in its
worker processes and hands over uint8 batches, each sample with its position in the epoch's order
(for the batch stage's augmentation draws) or its index (for evaluation)."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visionfit.data.order import EpochOrder, FollowsOrder, sample_seed
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader

# (sample index, seed of its per-sample random choices, position in the epoch's order)
SampleKey = tuple[int, int, int]


class EpochBatchSampler(FollowsOrder, Sampler[list[SampleKey]]):
    """Batches of sample keys in the `order`'s walk: `set_epoch(e, start_batch=k)` continues a
    half-finished epoch at batch k, and with several processes each yields only its rank's share
    of every global batch, so the data seen per step does not depend on their number."""

    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[SampleKey]]:
        seed, epoch = self.order.seed, self.order.epoch
        # A draw with replacement (--sampler balanced) may pick a sample twice in an epoch: each
        # draw then gets its own per-sample choices, seeded by its position (past the indices).
        drawn = self.order.num_samples if self.order.weights is not None else None
        for indices, positions in self.order:
            yield [
                (index, sample_seed(seed, epoch, index if drawn is None else drawn + position), position)
                for index, position in zip(indices.tolist(), positions.tolist(), strict=True)
            ]


class SampleDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Reads one sample and brings it to the input size as uint8: `dataset[key]` is
    (image, label, position) for a `SampleKey`, (image, label, index) for a plain index."""

    def __init__(self, samples: Samples, reader: PictureReader) -> None:
        self.samples = samples
        self.labels = samples.label_tensor()
        self.reader = reader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int, int]:
        index, seed, position = key if isinstance(key, tuple) else (key, None, key)
        rng = random.Random(seed) if seed is not None else None
        label = self.labels[index]  # a class index, or a row of 0/1 per class (several labels per image)
        return self.reader(self.samples.picture(index), rng), label if label.dim() else int(label), position


def default_workers(device: torch.device, samples: Samples, processes: int = 1) -> int:
    """Loader processes: none for in-memory images on a CPU (workers would only compete with the
    model for the same cores), otherwise up to 8, leaving one core for the main process; the
    machine's cores are shared by the `processes` training processes running on it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = max(1, cores // processes)
    if device.type == "cpu" and samples.in_memory:
        return 0
    return max(0, min(8, cores - 1))


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A job scheduler signals every process of a job (SLURM: SIGTERM, SIGUSR1), and Ctrl-C the
    whole terminal group; a loader process killed by it would fail the run mid-step. The training
    process saves and stops on them after its step (engine.preemption) and then ends its loaders."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)


def _private_generator() -> torch.Generator:
    """A DataLoader draws a worker base seed from its generator every time it starts an epoch;
    with the default (torch's global RNG) that would make the model's own randomness (dropout)
    depend on how many epochs were started, which differs after a resume. Our augmentation is
    seeded per sample, so the workers' seeds do not matter: give them a generator of their own."""
    return torch.Generator().manual_seed(0)


def train_loader(
    samples: Samples,
    reader: PictureReader,
    sampler: EpochBatchSampler,
    *,
    workers: int,
    device: torch.device,
) -> DataLoader[Any]:
    """uint8 training batches `(images, labels, positions)` in the sampler's order."""
    return DataLoader(
        SampleDataset(samples, reader),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=_private_generator(),
        worker_init_fn=_leave_stop_signals_to_the_trainer,
    )


def eval_loader(
    samples: Samples,
    reader: PictureReader,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    indices: Sequence[int] | None = None,
) -> DataLoader[Any]:
    """uint8 batches `(images, labels, indices)` in file order, of the samples at `indices` (all by
    default; with several processes each passes its own `order.shard` of them, without padding, so
    that every sample is counted exactly once when the sums are added up)."""
    return DataLoader(
        SampleDataset(samples, reader),
        batch_size=batch_size,
        sampler=range(len(samples)) if indices is None else indices,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=_private_generator(),
        worker_init_fn=_leave_stop_signals_to_the_trainer,
    )
