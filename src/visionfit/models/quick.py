"""The PyTorch tutorial's CIFAR-10 network ("CIFAR10-quick"), layer for layer."""

from __future__ import annotations

from torch import nn

from visionfit.models.registry import register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Cifar10Quick(nn.Sequential):
    """3 x [Conv 5x5 (pad 2), MaxPool 2] → Flatten → Linear(64·4·4 → 64) → Linear(64 → N).

    Kept an `nn.Sequential` with the tutorial's layer order, so a state dict saved by the
    tutorial's `Tudui().model` maps onto it index for index.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__(
            nn.Conv2d(3, width, kernel_size=5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, kernel_size=5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, 64),
            nn.Linear(64, num_classes),
        )


@register_model(
    "cifar10-quick",
    description="the PyTorch tutorial's CIFAR-10 CNN (3 conv 5x5 + "
    "2 linear layers, no activations), for 32x32 input",
    input_size=32,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
)
def cifar10_quick(num_classes: int, width: int = 32) -> nn.Module:
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    return Cifar10Quick(num_classes=num_classes, width=width)
