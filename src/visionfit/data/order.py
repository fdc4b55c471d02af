"""The order in which an epoch visits the samples, and the seeds of its random choices: functions
of (seed, epoch, sample) only — never of worker count, timing, process count or where a run was
resumed. `EpochOrder` is the one walk through an epoch (seeded permutation, this process's share of
each global batch, the batch a resumed epoch starts at) that the memory path, the per-sample
loader and the feature cache all follow."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

_MASK64 = (1 << 64) - 1
Items = TypeVar("Items", bound=Sequence[Any])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch (splitmix64); negative
    indices name the epoch-wide streams (the permutation, the crop and flip draws)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1


def epoch_order(
    num_samples: int, seed: int, epoch: int, shuffle: bool, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The sample indices in the order epoch `epoch` visits them. With `weights` (--sampler
    balanced), `num_samples` draws with replacement, each sample in proportion to its weight, from
    the same seeded stream as the permutation (a function of seed and epoch alone)."""
    if weights is not None:
        generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
        return torch.multinomial(
            weights.to(torch.float64), num_samples, replacement=True, generator=generator
        )
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Each sample's weight in `--sampler balanced`'s draw: 1 / (its class's count), so that every
    class is drawn equally often."""
    labels = labels.flatten().to(torch.int64)
    return 1.0 / torch.bincount(labels).to(torch.float64)[labels]


def batches_in_epoch(num_samples: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches of one epoch. Dropping the ragged last batch keeps BatchNorm away from one-image
    batches, but an epoch keeps at least one batch even for a dataset smaller than the batch; a
    ragged last batch too small to give every process an image is dropped."""
    if drop_last and num_samples >= batch_size:
        return num_samples // batch_size
    return num_samples // batch_size + (num_samples % batch_size >= world_size)


def batch_positions(batch: int, batch_size: int, num_samples: int) -> torch.Tensor:
    """Positions in the epoch's order of global batch `batch` (the last one may be short)."""
    return torch.arange(batch * batch_size, min((batch + 1) * batch_size, num_samples))


def stream_seeds(seed: int, epoch: int, stream: int, positions: list[int]) -> list[int]:
    """Seeds of the samples at `positions` (in the epoch's order) for one of an epoch's named random
    streams (a negative `stream`): each augmentation draws from a stream of its own, so turning one
    on changes no other's draws."""
    base = sample_seed(seed, epoch, stream)
    return [sample_seed(base, 0, position) for position in positions]


def shard(items: Items, rank: int, world_size: int) -> Items:
    """This rank's part of a global batch (or of an index list): every `world_size`-th item from
    `rank` on. The parts of all ranks are disjoint and together are exactly `items`, so the union
    of what the ranks see is the same whatever the number of processes; sizes differ by at most
    one. Works on lists, tuples, numpy arrays and tensors alike."""
    if world_size == 1:
        return items
    return items[rank::world_size]  # type: ignore[return-value]


@dataclass
class EpochOrder:
    """How each epoch walks `num_samples` samples in global batches of `batch_size`: the seeded
    permutation (`epoch_order`; with `weights`, --sampler balanced's seeded draw with replacement),
    this process's `shard` of every batch (`rank` of `world_size`), and the batch to start at when
    a half-finished epoch resumes (`set_epoch(epoch, start_batch)`).

    Iterating yields, for each remaining batch, this process's sample indices and their positions
    in the epoch's order (the positions seed the batch stage's augmentation draws)."""

    num_samples: int
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    rank: int = 0
    world_size: int = 1
    weights: torch.Tensor | None = None  # --sampler balanced: each sample's chance to be drawn
    epoch: int = field(default=0, init=False)
    start_batch: int = field(default=0, init=False)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        return batches_in_epoch(self.num_samples, self.batch_size, self.drop_last, self.world_size)

    def __len__(self) -> int:
        """The batches left in this epoch."""
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle, self.weights)
        for batch in range(self.start_batch, self.batches_per_epoch()):
            positions = shard(
                batch_positions(batch, self.batch_size, self.num_samples), self.rank, self.world_size
            )
            yield order[positions], positions


class FollowsOrder:
    """A source of batches that follows an `EpochOrder` (the loop's sampler interface)."""

    order: EpochOrder

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.order.set_epoch(epoch, start_batch)

    def batches_per_epoch(self) -> int:
        return self.order.batches_per_epoch()

    def __len__(self) -> int:
        return len(self.order)


@contextmanager
def private_rng(device: torch.device) -> Iterator[None]:
    """Run code that draws from torch's global RNG (torchvision's v2 transforms do) on a fork of it:
    the CPU generator and, for images on an accelerator, that device's, restored on exit, so the
    model's own randomness (dropout) is untouched. Seed the fork with `reseed`.

    The per-image ops inside are too small to share between threads: on CPU they run on one
    (measured on 2 contended cores: 0.7 ms against 11 ms a 32-px TrivialAugmentWide image)."""
    devices = [device.index if device.index is not None else 0] if device.type in ("cuda", "mps") else []
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            if device.type == "cpu":
                torch.set_num_threads(1)
            yield
    finally:
        torch.set_num_threads(threads)


def reseed(seed: int, device: torch.device) -> None:
    """Seed the global generators that code on `device` draws from (inside `private_rng`)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
