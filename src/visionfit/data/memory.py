"""The fast data path: a whole dataset as one uint8 tensor, augmented a batch at a time.

Decoding a picture with PIL and augmenting it one sample at a time costs more than the tutorial
network's own forward and backward pass on a CPU. Small-image datasets fit in memory many times
over (CIFAR-10's 50,000 images are 150 MB as uint8), so they are decoded once — from the batch
files, or from the image files into a cache keyed by every file's path, size and mtime — and each
training batch is cut from that tensor, cropped and flipped with tensor indexing on the training
device and normalised there.

`MemoryBatches` is both the sampler and the loader of the training loop (`set_epoch`,
`batches_per_epoch`, iteration yielding `(images, labels)`), with the same data order as
`EpochBatchSampler`: the permutation and every augmentation choice of an epoch are drawn from
generators seeded by (seed, epoch) alone, so a run resumed at batch k sees what it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from visionfit.data.cifar import ArraySamples, cache_dir
from visionfit.data.folder import FileSamples
from visionfit.data.images import open_rgb
from visionfit.data.loaders import epoch_order, sample_seed
from visionfit.data.transforms import SMALL_IMAGE_SIDE, EvalTransform, Preprocess
from visionfit.distributed import shard
from visionfit.errors import UserError

Samples = ArraySamples | FileSamples
# Above this many bytes of decoded uint8 images (train and test together), --data-path auto keeps
# the per-sample loader: the memory path should never be what pushes a machine into swap.
MEMORY_BUDGET_BYTES = 2 * 1024**3
CACHE_FORMAT = 1  # bump when the cached tensors change meaning


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


def _resized(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Uint8 images at the model's input size, resized exactly as the evaluation transform does."""
    if tuple(images.shape[-2:]) == (preprocess.input_size, preprocess.input_size):
        return images
    transform = EvalTransform(preprocess)
    return torch.stack([transform.resize(image) for image in images])


def _cache_key(samples: FileSamples, preprocess: Preprocess) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "size": preprocess.input_size,
        "resize_mode": preprocess.resize_mode,
        "crop_fraction": preprocess.crop_fraction,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path, label in zip(samples.paths, samples.labels, strict=True):
        status = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()[:32]


def decode_files(samples: FileSamples, preprocess: Preprocess) -> torch.Tensor:
    """Decode every file (EXIF-oriented RGB, as training reads it) and resize it to the input size."""
    transform = EvalTransform(preprocess)
    size = preprocess.input_size
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    for index, path in enumerate(samples.paths):
        picture = torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)
        images[index] = transform.resize(picture)
    return images


def load_images(
    samples: Samples, preprocess: Preprocess, notify: Callable[[str], None] = print
) -> torch.Tensor:
    """The samples as one uint8 (N, 3, S, S) tensor at the model's input size S.

    Files are decoded once and cached as safetensors in visionfit's cache; any added, removed,
    resized or touched file gives another key, so a stale cache is never read.
    """
    if isinstance(samples, ArraySamples):
        return _resized(samples.images, preprocess)
    folder = cache_dir() / "decoded"
    path = folder / f"{_cache_key(samples, preprocess)}.safetensors"
    if path.is_file():
        try:
            images = load_file(str(path))["images"]
            if images.shape == (len(samples), 3, preprocess.input_size, preprocess.input_size):
                return images
        except Exception:  # a torn or foreign file: decode again and replace it
            pass
    notify(f"decoding {len(samples)} images into memory once (cached in {folder})")
    images = decode_files(samples, preprocess)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"images": images.contiguous()}, str(temporary))
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache costs only the next run's decoding time
        notify(f"warning: cannot cache the decoded images in {folder} ({error.strerror})")
    return images


def _labels(samples: Samples) -> torch.Tensor:
    if isinstance(samples, ArraySamples):
        return samples.labels.to(torch.int64)
    return torch.tensor(samples.labels, dtype=torch.int64)


class MemoryBatches:
    """Training batches cut from uint8 images held on the device, augmented there.

    Augmentation is the per-sample `TrainTransform`'s for small pictures: reflect-pad by an eighth
    of the side, crop back at a random offset, flip half of the images, then normalise.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        preprocess: Preprocess,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        augment: bool,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        low_res_size: int | None = None,
        low_res_epochs: int = 0,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.padding = max(1, preprocess.input_size // 8)
        self.size = preprocess.input_size
        # Padded once here rather than every batch: a third more memory, a third less work a step.
        self.images = reflect_pad(images, self.padding).to(device) if augment else images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last and len(labels) >= batch_size  # as EpochBatchSampler
        self.augment = augment
        self.device = device
        self.channels_last = channels_last
        std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add, on NCHW where the broadcast is cheap
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1) / std
        self.low_res_size = low_res_size
        self.low_res_epochs = low_res_epochs
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        count = len(self.labels)
        if self.drop_last:
            return count // self.batch_size
        # As EpochBatchSampler: a ragged last batch too small to give every process an image is dropped.
        return count // self.batch_size + (count % self.batch_size >= self.world_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def _augmentation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every sample's crop offsets and flip for this epoch, by position in the epoch's order."""
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -2))
        count = len(self.labels)
        offsets = torch.randint(0, 2 * self.padding + 1, (2, count), generator=generator)
        flips = torch.rand(count, generator=generator) < 0.5
        return offsets[0].to(self.device), offsets[1].to(self.device), flips.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self.labels), self.seed, self.epoch, self.shuffle).to(self.device)
        tops, lefts, flips = self._augmentation() if self.augment else (None, None, None)
        low_res = self.low_res_size if self.epoch <= self.low_res_epochs else None
        for batch in range(self.start_batch, self.batches_per_epoch()):
            # `batch_size` is the global batch; each process takes its share of every batch.
            positions = shard(
                torch.arange(batch * self.batch_size, min((batch + 1) * self.batch_size, len(order))),
                self.rank,
                self.world_size,
            ).to(self.device)
            indices = order[positions]
            images = self.images[indices]
            if tops is not None and lefts is not None and flips is not None:
                images = crop_and_flip(images, self.size, tops[positions], lefts[positions], flips[positions])
            yield self.normalise(images, low_res), self.labels[indices]

    def normalise(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        images = torch.addcmul(self.shift, images.float(), self.scale)
        if size is not None:  # antialiased, so the small images look like smaller photos, not aliased ones
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def reflect_pad(images: torch.Tensor, padding: int, chunk: int = 4096) -> torch.Tensor:
    """Reflect-pad uint8 images on every side, in chunks (padding needs a float copy)."""
    count, channels, height, width = images.shape
    shape = (count, channels, height + 2 * padding, width + 2 * padding)
    padded = torch.empty(shape, dtype=images.dtype)
    for start in range(0, count, chunk):
        part = torch.nn.functional.pad(images[start : start + chunk].float(), [padding] * 4, mode="reflect")
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


class MemoryEvalBatches:
    """Test batches from in-memory uint8 images, normalised on the device, in their stored order."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        preprocess: Preprocess,
        *,
        batch_size: int,
        device: torch.device,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # Each process evaluates every world_size-th image, without padding: summed over the
        # processes, every test image counts exactly once.
        self.train_like = MemoryBatches(
            shard(images, rank, world_size),
            shard(labels, rank, world_size),
            preprocess,
            batch_size=batch_size,
            shuffle=False,
            seed=0,
            drop_last=False,
            augment=False,
            device=device,
            channels_last=channels_last,
        )

    def __len__(self) -> int:
        return self.train_like.batches_per_epoch()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.train_like)


def build_memory_loaders(
    train: Samples,
    test: Samples,
    preprocess: Preprocess,
    *,
    batch_size: int,
    test_batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    augment: bool,
    device: torch.device,
    channels_last: bool = False,
    notify: Callable[[str], None] = print,
    rank: int = 0,
    world_size: int = 1,
    low_res_size: int | None = None,
    low_res_epochs: int = 0,
) -> tuple[MemoryBatches, MemoryEvalBatches]:
    """The training batches (also the loop's sampler) and the test batches of the memory path."""
    train_batches = MemoryBatches(
        load_images(train, preprocess, notify),
        _labels(train),
        preprocess,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        augment=augment,
        device=device,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
        low_res_size=low_res_size,
        low_res_epochs=low_res_epochs,
    )
    test_batches = MemoryEvalBatches(
        load_images(test, preprocess, notify),
        _labels(test),
        preprocess,
        batch_size=max(1, test_batch_size // world_size),  # a global size, like --batch-size
        device=device,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
    )
    return train_batches, test_batches
