"""The batch stage's optional augmentations: torchvision's automatic policies (--auto-augment),
random erasing (--random-erasing) and label mixing (--mixup, --cutmix).

torchvision's v2 transforms draw from torch's global RNG. Each step here runs them on a private
fork of it (`order.private_rng`), seeded per image (or, for mixing, per batch) from (seed, epoch,
position in the epoch's order) and a stream of its own: the same seed gives the same augmented
batch on either data path, with any number of loader workers, and on resume at any batch, and the
model's own random draws (dropout) are the same as without the step. The transforms are imported
when a step is built, so that runs without these options do not pay for the import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from visionfit.data.order import private_rng, reseed, stream_seeds

# Streams of the epoch's random draws (the permutation uses -1, crop and flip -2).
_POLICY_STREAM = -3
_ERASING_STREAM = -4
_MIXING_STREAM = -5

# --random-erasing's rectangle: its share of the image area and its aspect ratio (torchvision's
# and timm's defaults, from the Random Erasing paper).
ERASING_SCALE = (0.02, 0.33)
ERASING_RATIO = (0.3, 3.3)


def _policy(name: str) -> Any:
    from torchvision.transforms import v2

    policies = {
        "trivialwide": v2.TrivialAugmentWide,  # one random op at a random magnitude
        "randaugment": v2.RandAugment,  # two random ops at magnitude 9 of 31
        "augmix": v2.AugMix,  # a blend of three chains of 1-3 ops with the original
    }
    return policies[name]()


class _SeededStep:
    """A batch-stage step whose draws are a function of (seed, epoch, position)."""

    stream = 0

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def seeds(self, positions: torch.Tensor) -> list[int]:
        return stream_seeds(self.seed, self.epoch, self.stream, positions.tolist())

    def each_image(
        self, transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """`transform` of each image in turn, written back in place, each with the draws of its
        own seed (on a fork of torch's RNG: the model's own randomness stays untouched)."""
        with private_rng(images.device):
            for index, seed in enumerate(self.seeds(positions)):
                reseed(seed, images.device)
                images[index] = transform(images[index])
        return images


class AutoAugment(_SeededStep):
    """An automatic augmentation policy (`trivialwide`, `randaugment` or `augmix`), each uint8
    image with draws of its own. Runs one image at a time: the policies pick their operations per
    call, so a whole batch at once would share them."""

    stream = _POLICY_STREAM

    def __init__(self, policy: str, *, seed: int) -> None:
        super().__init__(seed)
        self.transform = _policy(policy)

    def __call__(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.each_image(self.transform, images.clone(), positions)  # the source batch stays as it is


class RandomErasing(_SeededStep):
    """torchvision's RandomErasing on the normalised batch, each image with probability
    `probability`: a rectangle of `ERASING_SCALE` of its area and aspect ratio in `ERASING_RATIO`,
    set to 0, the dataset's mean colour after normalisation (torchvision's reference recipe)."""

    stream = _ERASING_STREAM

    def __init__(self, probability: float, *, seed: int) -> None:
        from torchvision.transforms import v2

        super().__init__(seed)
        self.transform = v2.RandomErasing(probability, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0)

    def __call__(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.each_image(self.transform, inputs, positions)


class LabelMixing(_SeededStep):
    """MixUp (`mixup` > 0) and CutMix (`cutmix` > 0) of a normalised batch: each image is mixed with
    its neighbour in the batch (torchvision's roll by one; under several processes, within each
    process's share) in a proportion drawn from Beta(alpha, alpha), and the labels alike, as soft
    targets (rows of class probabilities that sum to 1). With both, each batch takes one of the two
    at even odds, as timm does. The draws are seeded by the batch's first position."""

    stream = _MIXING_STREAM

    def __init__(self, *, mixup: float, cutmix: float, num_classes: int, seed: int) -> None:
        from torchvision.transforms import v2

        super().__init__(seed)
        transforms: list[Any] = []
        if mixup > 0:
            transforms.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            transforms.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        if not transforms:
            raise ValueError("LabelMixing needs mixup > 0 or cutmix > 0")
        self.transform = transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms)

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with private_rng(inputs.device):
            reseed(self.seeds(positions[:1])[0], inputs.device)
            mixed, targets = self.transform(inputs, labels.long())
        return mixed, targets
