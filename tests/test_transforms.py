import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from visionfit.data.augment import Normalize
from visionfit.data.transforms import PictureReader, Preprocess, random_resized_crop_box

CIFAR = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def build_eval_transform(preprocess):
    """The evaluation transform as a whole: the per-picture resize, then the batch normalisation."""
    reader, normalize = PictureReader(preprocess), Normalize(preprocess, torch.device("cpu"))
    return lambda image: normalize(reader(image).unsqueeze(0))[0]


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


def test_random_resized_crops_depend_only_on_the_seed():
    reader = PictureReader(Preprocess(96, (0, 0, 0), (1, 1, 1)), random_crop=True)
    image = picture(160, 120)
    first = reader(image, random.Random(7))
    assert first.dtype == torch.uint8 and first.shape == (3, 96, 96)
    assert torch.equal(first, reader(image, random.Random(7)))
    outputs = {reader(image, random.Random(seed)).float().sum().item() for seed in range(20)}
    assert len(outputs) > 5  # the crops really vary


def test_without_random_crops_the_reader_is_the_evaluation_resize():
    image = picture(40, 30)
    plain = PictureReader(CIFAR)(image)
    assert plain.dtype == torch.uint8 and plain.shape == (3, 32, 32)
    assert torch.equal(PictureReader(CIFAR, random_crop=False)(image, random.Random(1)), plain)


@pytest.mark.parametrize(("height", "width"), [(100, 100), (50, 400), (400, 50), (1, 1)])
def test_random_resized_crop_box_stays_inside_the_image(height, width):
    rng = random.Random(0)
    for _ in range(50):
        top, left, box_height, box_width = random_resized_crop_box(height, width, rng)
        assert top >= 0 and left >= 0 and box_height >= 1 and box_width >= 1
        assert top + box_height <= height and left + box_width <= width


def test_preprocess_round_trips_through_a_dict():
    assert Preprocess.from_dict(CIFAR.to_dict()) == CIFAR
