"""The batch stage of every data path: uint8 batches on the training device → augmented,
normalised float batches for the model.

Both data paths (the whole dataset in memory, or the per-sample loader) hand over uint8 batches
with each sample's position in the epoch's order; everything random below is drawn once per epoch
from a generator seeded by (seed, epoch) and looked up by that position. So the same seed gives the
same augmented batch on either path, with any number of loader workers or processes, and a run
resumed at batch k sees exactly what it would have seen.

This is the seam where batch-level augmentations belong: each is a step `(images, positions) →
images` (or, for label-mixing ones, images and targets) that the training batches apply in turn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionfit.data.order import sample_seed
from visionfit.data.transforms import Preprocess, uses_padded_crops

# Salt of the generator that draws an epoch's crop offsets and flips (the permutation uses -1).
_CROP_AND_FLIP_STREAM = -2


def crop_padding(preprocess: Preprocess) -> int:
    """Reflect padding of small pictures before their random crop: an eighth of the side (4 px at 32),
    as in every CIFAR recipe."""
    return max(1, preprocess.input_size // 8)


class CropAndFlip:
    """Random crop and horizontal flip of uint8 batches on the device.

    Small pictures (`uses_padded_crops`) are reflect-padded by `padding` and cut back at a random
    offset; larger ones were already cropped per sample (random resized crop) and are only flipped.
    Half of the images are mirrored.
    """

    def __init__(self, preprocess: Preprocess, *, seed: int, count: int, device: torch.device) -> None:
        self.size = preprocess.input_size
        self.padding = crop_padding(preprocess) if uses_padded_crops(preprocess) else 0
        self.seed = seed
        self.count = count  # samples in an epoch: one draw each
        self.device = device
        self.tops = self.lefts = self.flips = torch.zeros(0)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Draw every sample's crop offsets and flip for this epoch, by position in its order."""
        if epoch == self.epoch:
            return
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, _CROP_AND_FLIP_STREAM))
        offsets = torch.randint(0, 2 * self.padding + 1, (2, self.count), generator=generator)
        flips = torch.rand(self.count, generator=generator) < 0.5
        self.tops, self.lefts = offsets[0].to(self.device), offsets[1].to(self.device)
        self.flips = flips.to(self.device)
        self.epoch = epoch

    def __call__(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        positions = positions.to(self.device)
        flips = self.flips[positions]
        if not self.padding:
            return torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
        if images.shape[-1] == self.size:  # not padded in advance (the memory path pads once)
            images = reflect_pad(images, self.padding)
        return crop_and_flip(images, self.size, self.tops[positions], self.lefts[positions], flips)


def reflect_pad(images: torch.Tensor, padding: int, chunk: int = 4096) -> torch.Tensor:
    """Reflect-pad uint8 images on every side, in chunks (padding needs a float copy)."""
    count, channels, height, width = images.shape
    shape = (count, channels, height + 2 * padding, width + 2 * padding)
    padded = torch.empty(shape, dtype=images.dtype, device=images.device)
    for start in range(0, count, chunk):
        part = F.pad(images[start : start + chunk].float(), [padding] * 4, mode="reflect")
        padded[start : start + chunk] = part.to(images.dtype)
    return padded


def crop_and_flip(
    padded: torch.Tensor, size: int, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Cut a `size` square from each padded image at its own (top, left), mirrored where `flips`:
    two gathers (rows, then columns, the flip folded into the column order)."""
    count, channels, _, padded_width = padded.shape
    steps = torch.arange(size, device=padded.device)
    rows = (tops.view(count, 1) + steps).view(count, 1, size, 1)
    padded = torch.gather(padded, 2, rows.expand(count, channels, size, padded_width))
    columns = torch.where(flips.view(count, 1), steps.flip(0), steps) + lefts.view(count, 1)
    return torch.gather(padded, 3, columns.view(count, 1, 1, size).expand(count, channels, size, size))


class Normalize:
    """uint8 batch → the model's float input: (x / 255 − mean) / std as one multiply-add on NCHW
    (where the broadcast is cheap), optionally scaled down to `size` (antialiased, so small images
    look like smaller photos rather than aliased ones), then in the runtime's memory layout."""

    def __init__(self, preprocess: Preprocess, device: torch.device, channels_last: bool = False) -> None:
        std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1) / std
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        images = torch.addcmul(self.shift, images.float(), self.scale)
        if size is not None:
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
