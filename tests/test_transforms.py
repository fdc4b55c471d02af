import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from visionfit.data.transforms import (
    Preprocess,
    build_eval_transform,
    build_train_transform,
    random_resized_crop_box,
)

CIFAR = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def picture(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_eval_equals_the_tutorials_totensor_and_normalize():
    image = picture(32, 32)
    expected = T.Compose([T.ToTensor(), T.Normalize(CIFAR.mean, CIFAR.std)])(image)
    assert torch.allclose(build_eval_transform(CIFAR)(image), expected, atol=1e-6)


def test_tensor_and_pil_inputs_give_the_same_result():
    image = picture(32, 32)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    transform = build_eval_transform(CIFAR)
    assert torch.equal(transform(image), transform(tensor))


def test_crop_mode_resizes_the_shorter_side_then_centre_crops():
    preprocess = Preprocess(32, (0, 0, 0), (1, 1, 1), crop_fraction=0.5)
    output = build_eval_transform(preprocess)(picture(200, 100))
    assert output.shape == (3, 32, 32)
    expected = T.Compose([T.Resize(64), T.CenterCrop(32), T.PILToTensor()])(picture(200, 100))
    assert (output * 255 - expected.float()).abs().max() <= 2  # tensor vs PIL resampling


def test_squash_mode_is_the_tutorials_resize_to_a_square():
    preprocess = Preprocess(32, (0, 0, 0), (1, 1, 1), resize_mode="squash")
    image = picture(64, 32)
    output = build_eval_transform(preprocess)(image)
    expected = T.Compose([T.Resize((32, 32)), T.ToTensor()])(image)
    assert output.shape == (3, 32, 32) and (output - expected).abs().max() < 0.02


def test_training_augmentation_depends_only_on_the_seed():
    transform = build_train_transform(CIFAR, augment=True)
    image = picture(32, 32)
    first = transform(image, random.Random(7))
    assert torch.equal(first, transform(image, random.Random(7)))
    outputs = {transform(image, random.Random(seed)).sum().item() for seed in range(20)}
    assert len(outputs) > 5  # crops and flips really vary


def test_small_image_augmentation_is_a_shifted_and_sometimes_flipped_copy():
    image = picture(32, 32)
    plain = build_eval_transform(CIFAR)(image)
    augmented = build_train_transform(CIFAR, augment=True)
    found = set()
    for seed in range(40):
        output = augmented(image, random.Random(seed))
        matches = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.equal(
                (output.flip(-1) if flip else output)[:, 4:28, 4:28],
                plain[:, 4 + dy : 28 + dy, 4 + dx : 28 + dx],
            )
        ]
        assert matches, f"seed {seed}: not a shifted copy of the image"
        found.add(matches[0])
    assert any(flip for _, _, flip in found) and any(not flip for _, _, flip in found)
    assert any((dy, dx) != (0, 0) for dy, dx, _ in found)


def test_without_augmentation_training_equals_evaluation():
    image = picture(40, 30)
    assert torch.equal(
        build_train_transform(CIFAR, augment=False)(image, random.Random(1)),
        build_eval_transform(CIFAR)(image),
    )


def test_large_inputs_use_random_resized_crops():
    preprocess = Preprocess(96, (0, 0, 0), (1, 1, 1))
    output = build_train_transform(preprocess, augment=True)(picture(160, 120), random.Random(3))
    assert output.shape == (3, 96, 96)


@pytest.mark.parametrize(("height", "width"), [(100, 100), (50, 400), (400, 50), (1, 1)])
def test_random_resized_crop_box_stays_inside_the_image(height, width):
    rng = random.Random(0)
    for _ in range(50):
        top, left, box_height, box_width = random_resized_crop_box(height, width, rng)
        assert top >= 0 and left >= 0 and box_height >= 1 and box_width >= 1
        assert top + box_height <= height and left + box_width <= width


def test_preprocess_round_trips_through_a_dict():
    assert Preprocess.from_dict(CIFAR.to_dict()) == CIFAR
