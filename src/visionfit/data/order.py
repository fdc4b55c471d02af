"""The order in which an epoch visits the samples, and the seeds of its random choices: functions
of (seed, epoch, sample) only — never of worker count, timing, process count or where a run was
resumed — shared by both data paths."""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation in one epoch (splitmix64); negative
    indices name the epoch-wide streams (the permutation, the crop and flip draws)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample indices in the order epoch `epoch` visits them."""
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator)


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
