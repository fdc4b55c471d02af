"""`InferenceModel`: a trained model ready to classify, with everything needed to feed it and read it.

It classifies uint8 batches at its input size (`preprocess` resizes pictures to that); everything
after the resize — normalisation, layout, precision, test-time augmentation — happens inside it.
`inference.load_for_inference` makes one from a checkpoint, `onnx_runtime.load_onnx` from an export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.choices import MAX_TEST_TIME_SHIFT
from visionfit.data.augment import Normalize
from visionfit.data.loaders import eval_loader
from visionfit.data.registry import DataSplits
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.engine.checkpoint_file import training_data
from visionfit.engine.loops import Classifier
from visionfit.errors import UserError
from visionfit.runtime import Runtime


@dataclass
class InferenceModel:
    """A trained model ready to classify: `network` in eval mode on `runtime.device`.

    `network` takes the batch `prepare` makes of the pixels: by default the checkpoint's
    normalisation (`Normalize`); a network that normalises inside itself (an exported ONNX graph)
    comes with its own `prepare`.
    """

    network: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    preprocess: Preprocess
    runtime: Runtime
    flip: bool = False  # test-time augmentation, as the checkpoint's training tested unless overridden
    shift: int = 0
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Temperature scaling (`visionfit calibrate`): the network's logits are divided by it. 1 for an
    # uncalibrated model, and for an export, whose graph divides by its temperature itself.
    temperature: float = 1.0
    classifier: Classifier = field(init=False, repr=False)  # the undivided logits

    def __post_init__(self) -> None:
        check_test_time_shift(self.shift, self.preprocess.input_size)
        if not self.temperature > 0:
            raise UserError(f"{self.source}: the temperature must be positive, got {self.temperature}")
        if self.prepare is None:
            self.prepare = Normalize(self.preprocess, self.runtime.device, self.runtime.channels_last)
        self.classifier = Classifier(
            self.network, self.prepare, self.runtime, flip=self.flip, shift=self.shift
        )

    @property
    def model(self) -> nn.Module:
        """The network as a torch module (a checkpoint's; an exported file's network is not one)."""
        if not isinstance(self.network, nn.Module):
            raise UserError(f"{self.source} is not a PyTorch model")
        return self.network

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, classes) on the device for a batch of pictures at the input size:
        uint8 (N, 3, S, S), or float on the same 0–255 scale; divided by the temperature, so that
        their softmax is the calibrated probabilities."""
        logits = self.classifier(images)
        return logits / self.temperature if self.temperature != 1.0 else logits

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, classes) on the CPU: softmax, or one sigmoid per class when the model
        gives several labels per image (`multilabel`)."""
        logits = self.logits(images)
        return (torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)).cpu()

    @property
    def multilabel(self) -> bool:
        """Whether the model answers with a set of labels per image (trained with --task multilabel)."""
        task = self.metadata.get("task") or self.metadata.get("config", {}).get("task")
        return task == "multilabel"

    @property
    def thresholds(self) -> list[float]:
        """Each class's decision threshold (multi-label: chosen on validation data, else 0.5)."""
        return [float(value) for value in self.metadata.get("thresholds") or [0.5] * len(self.classes)]

    def training_data(
        self, dataset: str | None = None, data_dir: str | None = None, *, download: bool = True
    ) -> DataSplits:
        """The data the model was trained on (or the data named), split as training split it."""
        return training_data(self.metadata.get("config", {}), dataset, data_dir, download=download)

    def batches(self, samples: Samples, *, batch_size: int = 256, workers: int = 0) -> Any:
        """`(images, labels, indices)` batches of `samples` decoded and resized as this model's
        preprocessing says, on its device: what eval and calibrate classify."""
        reader, device = PictureReader(self.preprocess), self.runtime.device
        return eval_loader(samples, reader, batch_size=batch_size, workers=workers, device=device)

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy recorded with the weights (the epoch they come from), if any."""
        return self.metadata.get("metrics", {}).get("test_accuracy")


def check_test_time_shift(shift: int, input_size: int) -> None:
    if not 0 <= shift <= MAX_TEST_TIME_SHIFT or shift >= input_size:
        raise UserError(
            f"test-time shift must be between 0 and {min(MAX_TEST_TIME_SHIFT, input_size - 1)} pixels "
            f"for {input_size}-pixel input, got {shift}"
        )
