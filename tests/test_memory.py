"""The in-memory data path: same data as the per-sample loader, seeded augmentation, disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as F

import visionfit.data.memory as memory
from visionfit.data.cifar import ArraySamples
from visionfit.data.folder import load_folder
from visionfit.data.loaders import build_eval_loader, build_train_loader
from visionfit.data.memory import (
    MemoryBatches,
    build_memory_loaders,
    choose_data_path,
    crop_and_flip,
    load_images,
    reflect_pad,
)
from visionfit.data.transforms import Preprocess, build_eval_transform, build_train_transform
from visionfit.errors import UserError

PREPROCESS = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
CPU = torch.device("cpu")


def random_samples(count: int = 20, side: int = 32) -> ArraySamples:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)
    return ArraySamples(images, torch.arange(count) % 4)


def memory_batches(samples: ArraySamples, **options: object) -> MemoryBatches:
    settings: dict[str, object] = {
        "batch_size": 6,
        "shuffle": True,
        "seed": 7,
        "drop_last": False,
        "augment": True,
        "device": CPU,
    }
    settings.update(options)
    return MemoryBatches(samples.images, samples.labels, PREPROCESS, **settings)  # type: ignore[arg-type]


def test_without_augmentation_the_memory_path_feeds_what_the_loader_feeds(tmp_path):
    """Same order (shuffled by the same seeded permutation) and the same normalised numbers."""
    samples = random_samples()
    loader, sampler = build_train_loader(
        samples,
        build_train_transform(PREPROCESS, augment=False),
        batch_size=6,
        shuffle=True,
        seed=7,
        workers=0,
        device=CPU,
        drop_last=False,
    )
    batches = memory_batches(samples, augment=False)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches.set_epoch(epoch)
        pairs = list(zip(loader, batches, strict=True))
        assert len(pairs) == 4
        for (expected_images, expected_labels), (images, labels) in pairs:
            assert torch.equal(labels, expected_labels)
            torch.testing.assert_close(images, expected_images, rtol=0, atol=1e-6)


def test_folder_images_are_decoded_and_resized_like_the_eval_transform(folder_dataset):
    _, train, test, _ = load_folder(folder_dataset, 0.25, seed=0)
    _, test_batches = build_memory_loaders(
        train,
        test,
        PREPROCESS,
        batch_size=4,
        test_batch_size=5,
        shuffle=True,
        seed=0,
        drop_last=True,
        augment=True,
        device=CPU,
        notify=lambda _: None,
    )
    loader = build_eval_loader(test, build_eval_transform(PREPROCESS), batch_size=5, workers=0, device=CPU)
    pairs = list(zip(loader, test_batches, strict=True))
    assert sum(len(labels) for _, (_, labels) in pairs) == len(test)
    for (expected_images, expected_labels), (images, labels) in pairs:
        assert torch.equal(labels, expected_labels)
        torch.testing.assert_close(images, expected_images, rtol=0, atol=1e-6)


def test_crop_and_flip_cuts_each_image_from_its_reflect_padded_copy():
    images = random_samples(5).images
    tops, lefts = torch.tensor([0, 8, 3, 4, 8]), torch.tensor([8, 0, 5, 4, 1])
    flips = torch.tensor([False, True, True, False, True])
    result = crop_and_flip(reflect_pad(images, 4, chunk=2), 32, tops, lefts, flips)
    for index in range(5):
        padded = F.pad(images[index], [4], padding_mode="reflect")
        top, left = int(tops[index]), int(lefts[index])
        expected = padded[:, top : top + 32, left : left + 32]
        if flips[index]:
            expected = expected.flip(-1)
        assert torch.equal(result[index], expected), index
    centre, unflipped = torch.full((5,), 4), torch.zeros(5, dtype=torch.bool)
    assert torch.equal(crop_and_flip(reflect_pad(images, 4), 32, centre, centre, unflipped), images)


def test_augmentation_depends_on_seed_epoch_and_batch_only():
    samples = random_samples()
    batches = memory_batches(samples)
    batches.set_epoch(3)
    whole = list(batches)
    assert [len(labels) for _, labels in whole] == [6, 6, 6, 2]
    replay = memory_batches(samples)  # a fresh process resuming at batch 2
    replay.set_epoch(3, start_batch=2)
    assert len(replay) == 2
    for (images, labels), (expected_images, expected_labels) in zip(replay, whole[2:], strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    batches.set_epoch(4)
    assert not torch.equal(next(iter(batches))[0], whole[0][0])
    other_seed = memory_batches(samples, seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(next(iter(other_seed))[0], whole[0][0])
    # every sample of the epoch is visited once
    assert sorted(torch.cat([labels for _, labels in whole]).tolist()) == sorted(samples.labels.tolist())


def test_drop_last_and_channels_last():
    batches = memory_batches(random_samples(), drop_last=True, channels_last=True)
    assert batches.batches_per_epoch() == 3
    images, _ = next(iter(batches))
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_decoded_files_are_cached_and_the_cache_follows_the_files(folder_dataset, monkeypatch):
    _, train, _, _ = load_folder(folder_dataset, 0.25, seed=0)
    messages: list[str] = []
    first = load_images(train, PREPROCESS, messages.append)
    assert first.shape == (len(train), 3, 32, 32) and len(messages) == 1

    def no_decoding(*_: object) -> torch.Tensor:
        raise AssertionError("decoded again although the files did not change")

    with monkeypatch.context() as patch:
        patch.setattr(memory, "decode_files", no_decoding)
        assert torch.equal(load_images(train, PREPROCESS, messages.append), first)
    path: Path = train.paths[0]
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    load_images(train, PREPROCESS, messages.append)
    assert len(messages) == 2  # a touched file is a new key: decoded again
    # a torn cache file is decoded again, not trusted
    for cached in Path(os.environ["VISIONFIT_CACHE"], "decoded").glob("*.safetensors"):
        cached.write_bytes(b"broken")
    assert torch.equal(load_images(train, PREPROCESS, messages.append), first)
    assert len(messages) == 3


def test_choosing_the_data_path(monkeypatch):
    small, big = random_samples(4), random_samples(4, side=8)
    assert choose_data_path("auto", small, small, PREPROCESS) == "memory"
    assert choose_data_path("loader", small, small, PREPROCESS) == "loader"
    large_input = Preprocess(224, PREPROCESS.mean, PREPROCESS.std)
    assert choose_data_path("auto", big, big, large_input) == "loader"
    with pytest.raises(UserError, match="--data-path memory: input size 224"):
        choose_data_path("memory", big, big, large_input)
    monkeypatch.setattr(memory, "MEMORY_BUDGET_BYTES", 10)
    assert choose_data_path("auto", small, small, PREPROCESS) == "loader"


def test_low_res_epochs_train_on_scaled_down_batches_then_on_full_size_ones():
    samples = random_samples()
    full = memory_batches(samples)
    low = memory_batches(samples, low_res_size=24, low_res_epochs=2, channels_last=True)
    for epoch in (1, 2, 3):
        full.set_epoch(epoch)
        low.set_epoch(epoch)
        for (expected, labels), (images, low_labels) in zip(full, low, strict=True):
            assert torch.equal(labels, low_labels)  # the same images, cropped and flipped alike
            if epoch <= 2:
                assert images.shape[-2:] == (24, 24)
                assert images.is_contiguous(memory_format=torch.channels_last)
                scaled = torch.nn.functional.interpolate(
                    expected, size=(24, 24), mode="bilinear", antialias=True, align_corners=False
                )
                torch.testing.assert_close(images, scaled)
            else:
                torch.testing.assert_close(images, expected)
