"""The optional augmentations of the batch stage (--auto-augment, --random-erasing, --mixup,
--cutmix): the statistics they promise, their seeding (a function of seed, epoch and position
only: the same batch on either data path, with workers, on resume) and their options."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from test_batches import CPU, PREPROCESS, batches_of, random_samples
from visionfit.config import TrainConfig
from visionfit.config.validation import check_config
from visionfit.data.augment import CropAndFlip, Normalize
from visionfit.data.order import epoch_order
from visionfit.data.policies import ERASING_SCALE, AutoAugment, LabelMixing, RandomErasing
from visionfit.engine.batches import optional_augmentations
from visionfit.errors import UserError

ALL_ON = {"auto_augment": "trivialwide", "random_erasing": 0.5, "mixup": 0.4, "cutmix": 1.0}
OPTIONS = [
    {"auto_augment": "trivialwide"},
    {"auto_augment": "randaugment"},
    {"auto_augment": "augmix"},
    {"random_erasing": 0.5},
    {"mixup": 0.4},
    {"cutmix": 1.0},
    ALL_ON,
]


def float_batch(count: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Normalised-looking images whose values are never exactly 0 and never repeat."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, side, side, generator=generator) + 0.1


def epoch_batches(train, epoch: int = 1, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train.set_epoch(epoch, start_batch)
    return list(train)


def test_a_mixup_batch_mixes_two_classes_in_the_drawn_proportion():
    images, labels = float_batch(8), torch.arange(8)
    mixing = LabelMixing(mixup=1.0, cutmix=0.0, num_classes=10, seed=0)
    proportions = []
    for first in range(0, 400, 8):  # 50 batches, each with its own draw
        mixed, targets = mixing(images.clone(), labels, torch.arange(first, first + 8))
        assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
        for index in range(8):
            neighbour = (index - 1) % 8  # torchvision pairs each image with the one before it
            assert set(targets[index].nonzero().flatten().tolist()) <= {index, neighbour}
            own = float(targets[index, index])
            expected = own * images[index] + (1 - own) * images[neighbour]
            torch.testing.assert_close(mixed[index], expected, rtol=1e-5, atol=1e-5)
        proportions.append(float(targets[0, 0]))
    assert len(set(proportions)) == 50  # a fresh proportion per batch
    assert 0.4 < sum(proportions) / 50 < 0.6  # Beta(1, 1) is uniform: mean 1/2


def test_a_cutmix_batch_takes_a_rectangle_of_the_neighbour_and_mixes_labels_by_its_area():
    images, labels = float_batch(6, side=32), torch.arange(6)
    mixing = LabelMixing(mixup=0.0, cutmix=1.0, num_classes=6, seed=3)
    pasted_some = False
    for first in range(0, 120, 6):
        mixed, targets = mixing(images.clone(), labels, torch.arange(first, first + 6))
        assert torch.allclose(targets.sum(1), torch.ones(6))
        for index in range(6):
            neighbour = (index - 1) % 6
            from_neighbour = (mixed[index] == images[neighbour]).all(0)
            assert ((mixed[index] == images[index]).all(0) | from_neighbour).all()
            rows, columns = from_neighbour.any(1).nonzero(), from_neighbour.any(0).nonzero()
            assert int(from_neighbour.sum()) == len(rows) * len(columns)  # one rectangle
            share = float(from_neighbour.float().mean())
            assert float(targets[index, neighbour]) == pytest.approx(share, abs=1e-6)
            assert float(targets[index, index]) == pytest.approx(1 - share, abs=1e-6)
            pasted_some |= share > 0
    assert pasted_some


def test_with_mixup_and_cutmix_each_batch_takes_one_of_them():
    images, labels = float_batch(4), torch.arange(4)
    mixing = LabelMixing(mixup=1.0, cutmix=1.0, num_classes=4, seed=1)
    kinds = []
    for first in range(0, 160, 4):
        mixed, _ = mixing(images.clone(), labels, torch.arange(first, first + 4))
        kept = (mixed == images) | (mixed == images.roll(1, 0))
        kinds.append("cutmix" if kept.all() else "mixup")
    assert 10 < kinds.count("cutmix") < 30  # even odds over 40 batches


def test_mixed_soft_targets_work_with_label_smoothing():
    logits = torch.randn(6, 5)
    _, targets = LabelMixing(mixup=0.4, cutmix=0.0, num_classes=5, seed=0)(
        float_batch(6), torch.arange(6) % 5, torch.arange(6)
    )
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, targets)
    smoothed = targets * 0.9 + 0.1 / 5
    expected = -(smoothed * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)


def test_random_erasing_hits_about_p_of_the_images_with_a_rectangle_in_the_scale_range():
    inputs = float_batch(600, side=48)
    erased = RandomErasing(0.3, seed=0)(inputs.clone(), torch.arange(600))
    zero = (erased == 0).all(1)  # (N, H, W): erased pixels are 0 in every channel
    hit = zero.flatten(1).any(1)
    assert 0.24 < float(hit.float().mean()) < 0.36  # 180 expected, sd about 11
    assert torch.equal(erased[~hit], inputs[~hit])
    areas = []
    for mask in zero[hit]:
        rows, columns = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert int(mask.sum()) == len(rows) * len(columns)  # one rectangle
        areas.append(float(mask.float().mean()))
    low, high = ERASING_SCALE
    assert low * 0.9 <= min(areas) and max(areas) <= high * 1.1  # whole pixels round the area
    assert 0.12 < sum(areas) / len(areas) < 0.23  # uniform on [0.02, 0.33]: mean 0.175


@pytest.mark.parametrize("policy", ["trivialwide", "randaugment", "augmix"])
def test_auto_augment_keeps_uint8_and_gives_each_sample_its_own_draw(policy):
    image = random_samples(1).images[0]
    images = image.expand(24, -1, -1, -1).contiguous()
    augment = AutoAugment(policy, seed=0)
    augment.set_epoch(1)
    output = augment(images, torch.arange(24))
    assert output.dtype == torch.uint8 and output.shape == images.shape
    distinct = {bytes(picture.numpy().tobytes()) for picture in output}
    assert len(distinct) > 12  # the same picture, augmented differently per position
    assert torch.equal(augment(images, torch.arange(24)), output)  # a function of the position
    augment.set_epoch(2)
    assert not torch.equal(augment(images, torch.arange(24)), output)  # and of the epoch


def test_options_off_leave_the_batches_as_crop_flip_and_normalise_make_them():
    assert optional_augmentations(TrainConfig(), 4) == {"policy": None, "erasing": None, "mixing": None}
    samples = random_samples()
    train, _ = batches_of(samples, path="memory")
    crop = CropAndFlip(PREPROCESS, seed=7, count=len(samples), device=CPU)
    crop.set_epoch(1)
    normalize, order = Normalize(PREPROCESS, CPU), epoch_order(len(samples), 7, 1, True)
    for batch, (inputs, targets) in enumerate(epoch_batches(train)):
        positions = torch.arange(batch * 6, min(batch * 6 + 6, len(samples)))
        indices = order[positions]
        assert torch.equal(targets, samples.labels[indices])
        assert torch.equal(inputs, normalize(crop(samples.images[indices], positions)))


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: "+".join(map(str, options.values())))
def test_both_data_paths_and_a_resumed_epoch_give_the_same_augmented_batches(options):
    samples = random_samples()
    memory = epoch_batches(batches_of(samples, path="memory", **options)[0])
    again = epoch_batches(batches_of(samples, path="memory", **options)[0])
    loader = epoch_batches(batches_of(samples, path="loader", **options)[0])
    resumed = epoch_batches(batches_of(samples, path="memory", **options)[0], start_batch=2)
    plain = epoch_batches(batches_of(samples, path="memory")[0])
    assert len(memory) == len(loader) == 4 and len(resumed) == 2
    for first, *others in zip(memory, again, loader, [None, None, *resumed], strict=True):
        for other in others:
            if other is not None:
                assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
    assert any(not torch.equal(first[0], base[0]) for first, base in zip(memory, plain, strict=True))
    if "mixup" in options or "cutmix" in options:
        assert memory[0][1].shape == (6, 4) and memory[0][1].dtype == torch.float32


def test_augmentation_depends_on_the_seed_not_on_workers_and_leaves_the_global_rng_alone():
    samples = random_samples()
    torch.manual_seed(5)
    reference = epoch_batches(batches_of(samples, path="loader", workers=2, **ALL_ON)[0])
    after_augmenting = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(4), after_augmenting)  # dropout & co. draw as without the steps
    in_process = epoch_batches(batches_of(samples, path="loader", workers=0, **ALL_ON)[0])
    other_seed = epoch_batches(batches_of(samples, path="loader", workers=0, seed=8, **ALL_ON)[0])
    for first, second, third in zip(reference, in_process, other_seed, strict=True):
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert not torch.equal(first[0], third[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mixup": -0.1}, "--mixup must be 0 .off. or a Beta alpha"),
        ({"cutmix": float("nan")}, "--cutmix must be"),
        ({"random_erasing": 1.5}, "--random-erasing must be a probability"),
        ({"auto_augment": "trivial"}, "--auto-augment must be one of none, trivialwide"),
        ({"ema": 1.0}, "--ema must be 0 .off. or a decay below 1"),
        ({"ema": -0.5}, "--ema must be"),
    ],
)
def test_out_of_range_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        check_config(TrainConfig(**options))
    check_config(TrainConfig(auto_augment="augmix", random_erasing=1.0, mixup=0.0, cutmix=2.0, ema=0.0))
