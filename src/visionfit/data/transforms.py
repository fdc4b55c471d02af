"""Preprocessing as the tutorial knows it (Resize, ToTensor, Normalize, RandomCrop, flips), built
from one `Preprocess` record that travels inside every checkpoint, so that prediction repeats the
evaluation transform of training exactly.

The transforms are small classes over torchvision's functional ops rather than a `v2.Compose`,
because training draws its random choices from a per-sample `random.Random` passed in by the
caller: v2's transforms read torch's global RNG, and saving and restoring that around every sample
cost 280 µs, more than the augmentation itself. A sample's augmentation is then a pure function of
its seed, whatever process or worker applies it.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from visionfit.errors import UserError

RESIZE_MODES = ("crop", "squash")
# Up to this side length a picture is "small" (CIFAR-like): augment by padding and shifting rather
# than by cropping a random part of it, which would throw away most of so few pixels.
SMALL_IMAGE_SIDE = 64
# torchvision's RandomResizedCrop defaults: area share and aspect ratio of the crop.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the model's input tensor.

    resize_mode "crop": scale the shorter side to input_size / crop_fraction, then take the centre
    square; "squash": resize straight to input_size x input_size (the tutorial's Resize((32, 32))).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "crop"
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value, as the weights were trained

    @property
    def interpolation_mode(self) -> F.InterpolationMode:
        return F.InterpolationMode(self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(
                f"unknown preprocessing keys {sorted(unknown)}; is the checkpoint from a newer visionfit?"
            )
        preprocess = cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})
        if preprocess.resize_mode not in RESIZE_MODES:
            raise UserError(f"unknown resize mode {preprocess.resize_mode!r}")
        if preprocess.interpolation not in {mode.value for mode in F.InterpolationMode}:
            raise UserError(f"unknown interpolation {preprocess.interpolation!r}")
        return preprocess


Picture = Image.Image | torch.Tensor


class EvalTransform:
    """PIL image or uint8 CHW tensor → normalised float CHW tensor; deterministic."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def resize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Bring a uint8 tensor to input_size x input_size (no work when it already is)."""
        size = self.preprocess.input_size
        height, width = tensor.shape[-2:]
        if self.preprocess.resize_mode == "squash":
            if (height, width) != (size, size):
                tensor = F.resize(
                    tensor, [size, size], interpolation=self.preprocess.interpolation_mode, antialias=True
                )
            return tensor
        shorter = round(size / self.preprocess.crop_fraction)
        if min(height, width) != shorter:
            tensor = F.resize(
                tensor, [shorter], interpolation=self.preprocess.interpolation_mode, antialias=True
            )
        if tuple(tensor.shape[-2:]) != (size, size):
            tensor = F.center_crop(tensor, [size, size])
        return tensor

    def to_float(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = F.to_dtype(tensor, torch.float32, scale=True)
        return F.normalize(tensor, list(self.preprocess.mean), list(self.preprocess.std))

    def __call__(self, picture: Picture, rng: random.Random | None = None) -> torch.Tensor:
        return self.to_float(self.resize(F.to_image(picture).as_subclass(torch.Tensor)))


class TrainTransform(EvalTransform):
    """The evaluation transform plus, with `augment`, a random crop and horizontal flip.

    Small images are padded by an eighth of their side (reflected, 4 pixels at 32) and cropped back,
    as in every CIFAR recipe; larger ones get the ImageNet-style random resized crop.
    """

    def __init__(self, preprocess: Preprocess, augment: bool) -> None:
        super().__init__(preprocess)
        self.augment = augment

    def __call__(self, picture: Picture, rng: random.Random | None = None) -> torch.Tensor:
        tensor = F.to_image(picture).as_subclass(torch.Tensor)
        if not self.augment:
            return self.to_float(self.resize(tensor))
        rng = rng or random.Random()
        size = self.preprocess.input_size
        if size <= SMALL_IMAGE_SIDE:
            padding = max(1, size // 8)
            padded = F.pad(self.resize(tensor), [padding], padding_mode="reflect")
            top, left = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
            tensor = padded[..., top : top + size, left : left + size]
        else:
            top, left, height, width = random_resized_crop_box(*tensor.shape[-2:], rng)
            tensor = F.resized_crop(
                tensor,
                top,
                left,
                height,
                width,
                [size, size],
                interpolation=self.preprocess.interpolation_mode,
                antialias=True,
            )
        if rng.random() < 0.5:
            tensor = F.horizontal_flip(tensor)
        return self.to_float(tensor)


def random_resized_crop_box(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (same scale/ratio rule and fallback), drawn from `rng`."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return (
                rng.randint(0, height - crop_height),
                rng.randint(0, width - crop_width),
                crop_height,
                crop_width,
            )
    ratio = width / height  # fall back to the largest centred box within the allowed ratios
    if ratio < CROP_RATIO[0]:
        crop_width, crop_height = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        crop_height, crop_width = height, round(height * CROP_RATIO[1])
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def build_eval_transform(preprocess: Preprocess) -> EvalTransform:
    return EvalTransform(preprocess)


def build_train_transform(preprocess: Preprocess, augment: bool) -> TrainTransform:
    return TrainTransform(preprocess, augment)
