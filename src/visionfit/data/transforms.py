"""Preprocessing as the tutorial knows it (Resize, ToTensor, Normalize), built from one
`Preprocess` record that travels inside every checkpoint, so that evaluation, prediction, serving
and export resize a picture exactly as training's evaluation did.

This module holds the per-picture part: any picture → a uint8 (3, S, S) tensor at the model's input
size, by the evaluation resize, or (training on large pictures) by a random resized crop of the
original. Everything after that — crops and flips of small pictures, normalisation — happens a
batch at a time on the training device (`augment`), the same code for every data path.

The random resized crop draws from a per-sample `random.Random` passed in by the caller rather than
from torch's global RNG (which v2's transforms read): saving and restoring that around every sample
cost 280 µs, more than the crop itself, and a sample's crop is then a pure function of its seed,
whatever process or worker applies it.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from visionfit.choices import INTERPOLATIONS, RESIZE_MODES
from visionfit.errors import UserError

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
    square; "letterbox": scale the longer side to input_size and pad the rest, centred, with the
    mean colour (the whole picture kept, undistorted); "squash": resize straight to input_size x
    input_size (the tutorial's Resize((32, 32))).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "crop"
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value, as the weights were trained

    @property
    def interpolation_mode(self) -> Any:
        """The torchvision `InterpolationMode` (torchvision is imported on first use: a second at start)."""
        from torchvision.transforms.v2 import InterpolationMode

        return InterpolationMode(self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def for_model(
        cls,
        spec: Any,
        *,
        input_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> Preprocess:
        """The preprocessing a registered model expects (a `models.ModelSpec`: its input size,
        normalisation, centre-crop share and interpolation), with the sizes and statistics given
        here in place of its own."""
        return cls(
            input_size or spec.input_size,
            mean or spec.mean,
            std or spec.std,
            "crop",
            spec.crop_fraction,
            spec.interpolation,
        )

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
        if preprocess.interpolation not in INTERPOLATIONS:
            raise UserError(f"unknown interpolation {preprocess.interpolation!r}")
        return preprocess


Picture = Image.Image | torch.Tensor


def as_uint8_tensor(picture: Picture) -> torch.Tensor:
    """A PIL image or a (3, H, W) tensor as a plain tensor (uint8 stays uint8)."""
    if isinstance(picture, torch.Tensor):
        return picture.as_subclass(torch.Tensor)
    pixels = torch.from_numpy(np.array(picture))  # (H, W, C), or (H, W) for one channel
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)


def resize_picture(tensor: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """The evaluation resize: a (3, H, W) tensor brought to input_size x input_size (no work when it
    already is). "crop": shorter side to input_size / crop_fraction, then the centre square;
    "letterbox": longer side to input_size, then padded to the square with the mean colour;
    "squash": straight to the square."""
    size = preprocess.input_size
    height, width = tensor.shape[-2:]
    whole = preprocess.resize_mode in ("squash", "letterbox")
    shorter = size if whole else round(size / preprocess.crop_fraction)
    if (height, width) == (size, size) and shorter == size:
        return tensor  # nothing to do (and no torchvision to import: a second at start)
    from torchvision.transforms.v2 import functional as F

    mode = preprocess.interpolation_mode
    if preprocess.resize_mode == "letterbox":
        longer = max(height, width)
        scaled = [max(1, round(height * size / longer)), max(1, round(width * size / longer))]
        if scaled != [height, width]:
            tensor = F.resize(tensor, scaled, interpolation=mode, antialias=True)
        return pad_to_square(tensor, size, preprocess.mean)
    if preprocess.resize_mode == "squash":
        return F.resize(tensor, [size, size], interpolation=mode, antialias=True)
    if min(height, width) != shorter:
        tensor = F.resize(tensor, [shorter], interpolation=mode, antialias=True)
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.center_crop(tensor, [size, size])
    return tensor


def pad_to_square(tensor: torch.Tensor, side: int, mean: tuple[float, float, float]) -> torch.Tensor:
    """`tensor` (3, H, W; H, W <= side) centred on a side x side canvas of the mean colour, which
    normalisation turns into zeros: the bars carry no signal."""
    fill = torch.tensor([value * 255 for value in mean], device=tensor.device)
    fill = fill.round().to(torch.uint8) if tensor.dtype == torch.uint8 else fill.to(tensor.dtype)
    canvas = fill[:, None, None].expand(tensor.shape[0], side, side).clone()
    height, width = tensor.shape[-2:]
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = tensor
    return canvas


def uses_padded_crops(preprocess: Preprocess) -> bool:
    """Small (CIFAR-like) pictures are augmented by padding and shifting rather than by cropping a
    random part of the original, which would throw away most of so few pixels."""
    return preprocess.input_size <= SMALL_IMAGE_SIDE


class PictureReader:
    """Picture → uint8 (3, S, S) tensor for the per-sample loader: the evaluation resize, or with
    `random_crop` torchvision's RandomResizedCrop of the original, drawn from the sample's RNG."""

    def __init__(self, preprocess: Preprocess, random_crop: bool = False) -> None:
        self.preprocess = preprocess
        self.random_crop = random_crop

    def __call__(self, picture: Picture, rng: random.Random | None = None) -> torch.Tensor:
        tensor = as_uint8_tensor(picture)
        if not self.random_crop:
            return resize_picture(tensor, self.preprocess)
        if self.preprocess.resize_mode == "letterbox":  # crops of the padded picture, as it is tested
            tensor = pad_to_square(tensor, max(tensor.shape[-2:]), self.preprocess.mean)
        top, left, height, width = random_resized_crop_box(*tensor.shape[-2:], rng or random.Random())
        size = self.preprocess.input_size
        from torchvision.transforms.v2 import functional as F

        return F.resized_crop(
            tensor,
            top,
            left,
            height,
            width,
            [size, size],
            interpolation=self.preprocess.interpolation_mode,
            antialias=True,
        )


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
