"""The batches of a run on both data paths: the same order, the same augmentation (one batch-stage
implementation), the same numbers; the in-memory decode cache; choosing the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as F

import visionfit.data.decoded as decoded
import visionfit.data.memory as memory
from visionfit.config import TrainConfig
from visionfit.data.augment import CropAndFlip, crop_and_flip, reflect_pad
from visionfit.data.folder import load_folder
from visionfit.data.memory import choose_data_path
from visionfit.data.registry import DataSplits
from visionfit.data.samples import ArraySamples
from visionfit.data.transforms import Preprocess
from visionfit.engine.batches import RunData, create_batches
from visionfit.errors import UserError
from visionfit.runtime import Runtime

PREPROCESS = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
CPU = torch.device("cpu")


def random_samples(count: int = 20, side: int = 32) -> ArraySamples:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)
    return ArraySamples(images, torch.arange(count) % 4)


def batches_of(
    train, test=None, *, path: str = "memory", channels_last: bool = False, low_res=None, **options
):
    """create_batches for `train` (and `test`) with a small config; `options` override its fields."""
    settings = {
        "batch_size": 6,
        "eval_batch_size": 5,
        "shuffle": True,
        "seed": 7,
        "drop_last": False,
        "workers": 0,
    }
    settings.update(options)
    data = DataSplits("test", ["a", "b", "c", "d"], train, test if test is not None else train, "")
    runtime = Runtime(CPU, channels_last=channels_last)
    return create_batches(RunData(TrainConfig(**settings), runtime, data, PREPROCESS, path, lambda _: None))


@pytest.mark.parametrize("augment", [False, True])
def test_both_data_paths_feed_the_same_batches(augment):
    """Same order (the same seeded permutation), the same crops and flips, the same numbers:
    augmentation is one implementation, applied a batch at a time on either path."""
    samples = random_samples()
    memory_batches, memory_test = batches_of(samples, augment=augment, path="memory")
    loader_batches, loader_test = batches_of(samples, augment=augment, path="loader")
    for epoch in (1, 2):
        memory_batches.set_epoch(epoch)
        loader_batches.set_epoch(epoch)
        pairs = list(zip(memory_batches, loader_batches, strict=True))
        assert len(pairs) == 4
        for (images, labels), (expected_images, expected_labels) in pairs:
            assert torch.equal(labels, expected_labels)
            assert torch.equal(images, expected_images)
    for (images, labels, indices), (expected, expected_labels, expected_indices) in zip(
        memory_test, loader_test, strict=True
    ):
        assert torch.equal(images, expected) and images.dtype == torch.uint8
        assert torch.equal(labels, expected_labels) and torch.equal(indices, expected_indices)


def test_folder_images_are_decoded_and_resized_as_the_loader_reads_them(folder_dataset):
    _, train, test, _ = load_folder(folder_dataset, 0.25, seed=0)
    _, memory_test = batches_of(train, test, path="memory")
    _, loader_test = batches_of(train, test, path="loader")
    pairs = list(zip(memory_test, loader_test, strict=True))
    assert sum(len(labels) for _, labels, _ in (batch for batch, _ in pairs)) == len(test)
    for (images, labels, _), (expected, expected_labels, _) in pairs:
        assert torch.equal(labels, expected_labels) and torch.equal(images, expected)


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


def test_small_pictures_are_shifted_and_sometimes_flipped_copies():
    images = random_samples(40).images
    augmentation = CropAndFlip(PREPROCESS, seed=0, count=40, device=CPU)
    augmentation.set_epoch(1)
    output = augmentation(images, torch.arange(40))
    found = set()
    for index in range(40):
        matches = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.equal(
                (output[index].flip(-1) if flip else output[index])[:, 4:28, 4:28],
                images[index][:, 4 + dy : 28 + dy, 4 + dx : 28 + dx],
            )
        ]
        assert matches, f"image {index}: not a shifted copy"
        found.add(matches[0])
    assert any(flip for _, _, flip in found) and any(not flip for _, _, flip in found)
    assert any((dy, dx) != (0, 0) for dy, dx, _ in found)


def test_large_pictures_are_only_flipped_in_the_batch_stage():
    large = Preprocess(96, (0, 0, 0), (1, 1, 1))
    images = torch.randint(0, 256, (16, 3, 96, 96), dtype=torch.uint8)
    augmentation = CropAndFlip(large, seed=0, count=16, device=CPU)
    augmentation.set_epoch(1)
    output = augmentation(images, torch.arange(16))
    flipped = [torch.equal(output[index], images[index].flip(-1)) for index in range(16)]
    assert all(flip or torch.equal(output[index], images[index]) for index, flip in enumerate(flipped))
    assert 0 < sum(flipped) < 16


def test_augmentation_depends_on_seed_epoch_and_batch_only():
    samples = random_samples()
    batches, _ = batches_of(samples, augment=True)
    batches.set_epoch(3)
    whole = list(batches)
    assert [len(labels) for _, labels in whole] == [6, 6, 6, 2]
    replay, _ = batches_of(samples, augment=True)  # a fresh process resuming at batch 2
    replay.set_epoch(3, start_batch=2)
    assert len(replay) == 2
    for (images, labels), (expected_images, expected_labels) in zip(replay, whole[2:], strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    batches.set_epoch(4)
    assert not torch.equal(next(iter(batches))[0], whole[0][0])
    other_seed, _ = batches_of(samples, augment=True, seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(next(iter(other_seed))[0], whole[0][0])
    # every sample of the epoch is visited once
    assert sorted(torch.cat([labels for _, labels in whole]).tolist()) == sorted(samples.labels.tolist())


def test_batches_do_not_depend_on_the_number_of_workers():
    samples = random_samples(24)

    def epoch_batches(workers):
        batches, _ = batches_of(samples, path="loader", augment=True, workers=workers, batch_size=8, seed=1)
        batches.set_epoch(3)
        return list(batches)

    for (images_a, labels_a), (images_b, labels_b) in zip(epoch_batches(0), epoch_batches(2), strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


def test_drop_last_and_channels_last():
    batches, _ = batches_of(random_samples(), drop_last=True, channels_last=True)
    assert batches.batches_per_epoch() == 3
    images, _ = next(iter(batches))
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_decoded_files_are_cached_and_the_cache_follows_the_files(folder_dataset, monkeypatch):
    _, train, _, _ = load_folder(folder_dataset, 0.25, seed=0)
    messages: list[str] = []
    first = train.images_at(PREPROCESS, messages.append)
    assert first.shape == (len(train), 3, 32, 32) and len(messages) == 1

    def no_decoding(*_: object) -> torch.Tensor:
        raise AssertionError("decoded again although the files did not change")

    with monkeypatch.context() as patch:
        patch.setattr(decoded, "decode_files", no_decoding)
        assert torch.equal(train.images_at(PREPROCESS, messages.append), first)
    path: Path = train.paths[0]
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    train.images_at(PREPROCESS, messages.append)
    assert len(messages) == 2  # a touched file is a new key: decoded again
    # a torn cache file is decoded again, not trusted
    for cached in Path(os.environ["VISIONFIT_CACHE"], "decoded").glob("*.safetensors"):
        cached.write_bytes(b"broken")
    assert torch.equal(train.images_at(PREPROCESS, messages.append), first)
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


@pytest.mark.parametrize("path", ["memory", "loader"])
def test_low_res_epochs_train_on_scaled_down_batches_then_on_full_size_ones(path):
    samples = random_samples()
    full, _ = batches_of(samples, augment=True, path=path)
    low, _ = batches_of(
        samples, path=path, augment=True, low_res_size=24, low_res_epochs=2, channels_last=True
    )
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
