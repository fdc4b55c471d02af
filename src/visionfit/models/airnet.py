"""A fast CIFAR-sized network in the style of airbench (Keller Jordan's CIFAR-10 speed records).

Three groups of [conv 3x3 → max-pool 2 → BatchNorm → GELU → conv 3x3 → BatchNorm → GELU] after a
2x2 stem convolution, then a global max-pool and one linear layer. Almost all of its FLOPs are in
3x3 convolutions at falling resolution (31 → 15 → 7 → 3 pixels), which is where oneDNN (CPU) and
cuDNN (GPU) are most efficient; BatchNorm lets it train at large learning rates in few epochs.
`width` scales every layer: FLOPs grow with its square.
"""

from __future__ import annotations

import torch
from torch import nn

from visionfit.models.quick import CIFAR10_MEAN, CIFAR10_STD
from visionfit.models.registry import register_model


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # airbench's setting: running statistics that weigh each new batch at 0.6 follow the weights,
    # which move fast at these learning rates, closely enough for evaluation after few epochs.
    return nn.BatchNorm2d(channels, momentum=0.6, eps=1e-12)


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, kernel_size=3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batch_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, kernel_size=3, padding="same", bias=False)
        self.norm2 = _batch_norm(channels_out)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """Stem (2x2 conv, no padding) → 3 conv groups → global max-pool → linear, scaled by 1/9.

    The output scale keeps the initial logits small, so label-smoothed cross-entropy starts near
    its uniform value instead of fighting large random logits in the first steps.
    """

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        widths = (width, 4 * width, 4 * width)
        self.stem = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.stem_activation = nn.GELU()
        self.groups = nn.Sequential(
            ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2])
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.output_scale = 1 / 9
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module is not self.stem:
                # Dirac-initialised first input channels make each group start near an identity
                # map of its input, as airbench does: deep and trainable from the first step.
                weight = module.weight.data
                torch.nn.init.dirac_(weight[: weight.size(1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem_activation(self.stem(x)))
        return self.head(self.pool(x).flatten(1)) * self.output_scale


@register_model(
    "airnet",
    description="fast CIFAR-sized BatchNorm CNN in airbench's style (stem + 3 conv groups); "
    "--model-arg width=N scales it (default 32), for 32x32 input",
    input_size=32,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
)
def airnet(num_classes: int, width: int = 32) -> nn.Module:
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    return AirNet(num_classes=num_classes, width=width)
