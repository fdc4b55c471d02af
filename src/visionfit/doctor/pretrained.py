"""Features from pretrained torchvision weights, the middle one of doctor's three sources of
features (after `--model`, before the quick models trained on the data itself).

Weights count as "on the machine" when torchvision's own cache holds their file
(TORCH_HOME/hub/checkpoints, where `train --pretrained` and torchvision downloads put them): then
the cheapest such model to run (fewest GFLOPS) is used without asking, and nothing is downloaded.
`--pretrained NAME` names the model instead and, as `train --pretrained` does, downloads its
weights once when they are missing; `--weights FILE` reads them from a local file. The network is
built by the model zoo exactly as training builds a pretrained model, and fed as its weights
expect (their resize, crop, mean and std). Weights trained on other pictures have memorised none
of these labels: the probabilities of a K-fold logistic regression on their features are
out-of-sample.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.data.transforms import Preprocess
    from visionfit.doctor.options import DoctorOptions
    from visionfit.inference import InferenceModel


@dataclass(frozen=True)
class PretrainedSource:
    """Which pretrained network gives the features: a torchvision model, the name of its weights,
    and their local file (None: torchvision downloads them first, as `--pretrained NAME` allows)."""

    name: str
    weights: str
    file: Path | None

    def describe(self) -> str:
        where = f" ({self.file})" if self.file else " (downloaded by torchvision)"
        return f"torchvision {self.name} with its pretrained weights {self.weights}{where}"

    def identity(self) -> list[Any]:
        """What the features depend on, for the evidence cache: the weights' file by path, size and
        modification time (torchvision checks a download's hash; a file is what it is)."""
        if self.file is None:
            return [self.name, self.weights, None]
        status = self.file.stat()
        return [self.name, self.weights, str(self.file.resolve()), status.st_size, status.st_mtime_ns]


def cached_weights_file(weights: Any) -> Path:
    """Where torchvision keeps `weights` once downloaded (torch.hub's cache, under TORCH_HOME)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def find_cached_pretrained() -> PretrainedSource | None:
    """The torchvision classification weights whose file is already in torch's cache, the cheapest
    to run (fewest GFLOPS) when there are several; None when there are none."""
    import torchvision
    from torchvision.models import get_model_weights, list_models

    found = []
    for name in list_models(module=torchvision.models):
        for weights in get_model_weights(name):
            file = cached_weights_file(weights)
            if file.is_file():
                found.append((weights.meta.get("_ops", math.inf), name, str(weights), file))
    if not found:
        return None
    _, name, weights, file = min(found)
    return PretrainedSource(name, weights, file)


def check_pretrained_options(options: DoctorOptions) -> None:
    """One-line errors for --pretrained/--weights before any data is read."""
    if options.weights and not options.pretrained:
        raise UserError("--weights FILE is the weights of --pretrained NAME; name the model too")
    if options.pretrained and (options.model or options.no_pretrained):
        raise UserError("--pretrained NAME gives the features; leave out --model and --no-pretrained")
    if options.pretrained:
        from visionfit.models import get_model_spec
        from visionfit.models.torchvision_zoo import FAMILY

        if get_model_spec(options.pretrained).family != FAMILY:
            raise UserError(
                f"--pretrained {options.pretrained}: not a torchvision model with pretrained weights "
                "(see `visionfit models`)"
            )


def choose_pretrained(options: DoctorOptions) -> PretrainedSource | None:
    """The pretrained network doctor takes its features from, or None (--model, --no-pretrained, or
    no weights on this machine and none named)."""
    if options.model or options.no_pretrained:
        return None
    if not options.pretrained:
        return find_cached_pretrained()
    from visionfit.models.torchvision_zoo import default_weights

    weights = default_weights(options.pretrained)
    if options.weights:
        return PretrainedSource(options.pretrained, str(weights), Path(options.weights).expanduser())
    file = cached_weights_file(weights)
    return PretrainedSource(options.pretrained, str(weights), file if file.is_file() else None)


def weights_preprocess(source: PretrainedSource) -> Preprocess:
    """The pictures as these weights were trained to see them: their resize, crop and statistics."""
    from torchvision.models import get_weight

    from visionfit.data.transforms import Preprocess

    transforms = get_weight(source.weights).transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    mean, std = tuple(transforms.mean), tuple(transforms.std)
    return Preprocess(
        input_size=crop,
        mean=mean,
        std=std,
        resize_mode="crop",
        crop_fraction=crop / resize,
        interpolation=transforms.interpolation.value,
    )


def pretrained_model(source: PretrainedSource, num_classes: int, device: str) -> InferenceModel:
    """The pretrained network as the model zoo builds it for training from these weights (its new
    head is never read: doctor takes what enters it), ready to run on `device`."""
    from visionfit.inference.model import InferenceModel
    from visionfit.models.record import StartingWeights, create_training_model
    from visionfit.runtime import create_runtime

    start = StartingWeights(pretrained=source.file is None, file=str(source.file) if source.file else None)
    network = create_training_model(source.name, num_classes, {}, start=start)
    runtime = create_runtime(device)
    classes = [str(index) for index in range(num_classes)]
    return InferenceModel(runtime.prepare_model(network).eval(), classes, weights_preprocess(source), runtime)
