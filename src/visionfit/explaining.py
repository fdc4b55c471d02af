"""`visionfit explain`: where the model looked — class activation maps from the `grad-cam` package
(pytorch-grad-cam, MIT) rather than hooks of our own.

A map needs a layer that still has a picture's layout (channels × height × width) and the gradients
of the network that made it, so it needs the checkpoint: an ONNX export has neither. The layer is
chosen per model family (`target_layer`): the last stage for the families whose last stage is the
natural one (airnet's last conv group, a ResNet's `layer4`), otherwise the last convolution — the
tutorial's CNN, every other torchvision CNN, a user's own module. A vision transformer has no
convolutional map to look at (only its patch embedding): it is refused unless `--layer` names one.

`Explainer` keeps its own copy of the network, so that the hooks grad-cam puts on it never see the
forward passes of anything else using the model (the service's predictions on another thread).
"""

from __future__ import annotations

import copy
import importlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.errors import UserError
from visionfit.inference import InferenceModel
from visionfit.prediction import Predictor, picture_pixels, stack_pixels

INSTALL_HINT = 'pip install "visionfit[explain]"'
# --method name → the grad-cam class; the ones that work from one forward and backward pass.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
}
# Families whose natural Grad-CAM layer is a whole last stage, by the name prefix of the model.
STAGE_LAYERS = {
    "airnet": "groups.2",
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "densenet": "features",  # after its final BatchNorm: the last dense layer alone has 32 channels
    "convnext": "features.7",  # the last stage, not its last block's depthwise convolution
    "regnet": "trunk_output",
}
TRANSFORMERS = ("vit_", "swin_")
NO_CHECKPOINT = (
    "explanations need the checkpoint: an ONNX export has no gradients to follow; run them on the "
    "checkpoint it was exported from"
)


def grad_cam_module() -> Any:
    """The `pytorch_grad_cam` package, or one line saying which extra installs it."""
    try:
        return importlib.import_module("pytorch_grad_cam")
    except ImportError:
        raise UserError(
            f"explanations need the grad-cam package, which is not installed: {INSTALL_HINT}"
        ) from None


def target_layer(network: nn.Module, model_name: str, layer: str | None = None) -> str:
    """The name of the layer whose activations the maps are made of (see the module's docstring)."""
    names = dict(network.named_modules())
    if layer is not None:
        if not layer or layer not in names:
            last = ", ".join(convolutions(network)[-5:])
            raise UserError(f"--layer {layer}: no such layer in {model_name}; its last convolutions: {last}")
        return layer
    if model_name.startswith(TRANSFORMERS):
        raise UserError(
            f"{model_name} is a vision transformer: it has no convolutional feature map for Grad-CAM; "
            "name a layer whose output is (N, C, H, W) with --layer, or use a CNN"
        )
    for prefix, stage in STAGE_LAYERS.items():
        if model_name.startswith(prefix) and stage in names:
            return stage
    found = convolutions(network)
    if not found:
        raise UserError(f"{model_name} has no convolution to explain; name a layer with --layer")
    return found[-1]


def follow_gradients_to(network: nn.Module, target: nn.Module) -> None:
    """Let autograd track the target layer's parameters only: its output then carries gradients,
    and the backward pass stops there instead of running down to the input through every layer
    before it (for resnet18's layer4 the backward pass shrinks to a fraction of a forward pass).
    A target without parameters (an activation) needs the whole network tracked."""
    network.requires_grad_(False)
    has_parameters = any(True for _ in target.parameters())
    (target if has_parameters else network).requires_grad_(True)


def convolutions(network: nn.Module) -> list[str]:
    return [name for name, module in network.named_modules() if isinstance(module, nn.Conv2d)]


@dataclass
class Explanation:
    """Maps (N, S, S) in [0, 1] at the input size, the class each explains, and the calibrated
    probabilities (N, classes) of the pass that made them."""

    maps: torch.Tensor
    explained: list[int]
    probabilities: torch.Tensor


class Explainer:
    """Class activation maps of an `InferenceModel`'s network, for batches of pixels at its input size."""

    def __init__(self, model: InferenceModel, *, method: str = "gradcam", layer: str | None = None) -> None:
        if method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        if not isinstance(model.network, nn.Module):
            raise UserError(NO_CHECKPOINT)
        package = grad_cam_module()
        self.model = model
        self.network = copy.deepcopy(model.network).float().eval()
        name = model.metadata.get("model", {}).get("name", "")
        self.layer = target_layer(self.network, name, layer)
        follow_gradients_to(self.network, self.network.get_submodule(self.layer))
        self.cam = getattr(package, METHODS[method])(
            model=self.network, target_layers=[self.network.get_submodule(self.layer)]
        )
        self.targets = importlib.import_module("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
        self.lock = threading.Lock()  # one map at a time: the hooks keep one pass's activations

    def explain(self, pixels: torch.Tensor, class_index: int | Sequence[int] | None = None) -> Explanation:
        """Maps for a uint8 (N, 3, S, S) batch: of the predicted class of each image, or of
        `class_index` (one for all, or one per image). Test-time augmentation is not applied to
        the maps (one view)."""
        assert self.model.prepare is not None
        inputs = self.model.prepare(pixels.to(self.model.runtime.device)).float().contiguous()
        chosen = [class_index] * len(inputs) if isinstance(class_index, int) else class_index
        targets = None if chosen is None else [self.targets(index) for index in chosen]
        with self.lock, torch.enable_grad():
            maps = self.cam(input_tensor=inputs, targets=targets)
            logits = self.cam.outputs.detach().float()
        probabilities = torch.softmax(logits / self.model.temperature, dim=1).cpu()
        explained = list(chosen) if chosen is not None else logits.argmax(dim=1).tolist()
        return Explanation(torch.from_numpy(maps).float(), explained, probabilities)

    def mistake_overlays(
        self, pictures: Sequence[torch.Tensor], chosen: Sequence[str], true: Sequence[str], *, side: int = 112
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each wrongly classified picture, the overlays of where the model looked for the
        class it chose and for the true class."""
        if not pictures:
            return []
        batch, classes = torch.stack(list(pictures)), self.model.classes
        maps = [self.explain(batch, [classes.index(name) for name in names]).maps for names in (chosen, true)]
        return [
            (overlay(picture, maps[0][row], side=side), overlay(picture, maps[1][row], side=side))
            for row, picture in enumerate(pictures)
        ]


def overlay(picture: torch.Tensor, heatmap: torch.Tensor, *, side: int = 224) -> torch.Tensor:
    """The picture (uint8 (3, S, S)) with the heatmap ((S, S) in [0, 1]) laid over it in the jet
    colours, as uint8 (side, side, 3), enlarged so that a 32-pixel picture can be seen."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    size = max(side, picture.shape[-1])
    image = nn.functional.interpolate(picture[None].float() / 255, size=(size, size), mode="bilinear")[0]
    mask = nn.functional.interpolate(heatmap[None, None].float(), size=(size, size), mode="bilinear")[0, 0]
    rgb = image.clamp(0, 1).permute(1, 2, 0).numpy()
    return torch.from_numpy(show_cam_on_image(rgb, mask.clamp(0, 1).numpy(), use_rgb=True, image_weight=0.55))


def png_bytes(pixels: torch.Tensor) -> bytes:
    """uint8 (H, W, 3) as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class ExplainedFile:
    """One input's answer: its top classes, the class its map explains and where the overlay went,
    or why it could not be read."""

    source: str
    top: list[tuple[str, float]]
    explained: str | None = None
    overlay_path: Path | None = None
    error: str | None = None


def read_pictures(sources: Sequence[str], model: InferenceModel, threads: int) -> list[torch.Tensor | str]:
    """Each source as the model's pixels (`prediction.picture_pixels`), or the reason it cannot be read."""

    def read(source: str) -> torch.Tensor | str:
        try:
            return picture_pixels(source, model.preprocess)
        except UserError as error:
            return str(error).removeprefix(f"{source}: ")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(read, sources))


def explain_files(
    explainer: Explainer,
    sources: Sequence[str],
    out_dir: Path,
    *,
    class_name: str | None = None,
    top_k: int = 3,
    batch_size: int = 32,
) -> list[ExplainedFile]:
    """Explain image files in batches: `out_dir/NAME.cam.png` (the picture with the map of the
    predicted class, or of `class_name`, over it) and the top classes of each."""
    model = explainer.model
    if class_name is not None and class_name not in model.classes:
        raise UserError(f"--class {class_name}: not one of the model's classes ({', '.join(model.classes)})")
    class_index = model.classes.index(class_name) if class_name is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ExplainedFile] = []
    taken: set[str] = set()
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        decoded = read_pictures(chunk, model, min(8, os.cpu_count() or 1))
        good = [index for index, item in enumerate(decoded) if isinstance(item, torch.Tensor)]
        answers: dict[int, ExplainedFile] = {}
        if good:
            pixels = stack_pixels([decoded[index] for index in good])  # type: ignore[misc]
            explanation = explainer.explain(pixels, class_index)
            tops = Predictor(model).top_k(explanation.probabilities, top_k)
            for row, index in enumerate(good):
                path = out_dir / unique_name(Path(chunk[index]).stem, taken)
                path.write_bytes(png_bytes(overlay(pixels[row], explanation.maps[row])))
                explained = model.classes[explanation.explained[row]]
                answers[index] = ExplainedFile(chunk[index], tops[row], explained, path)
        for index, source in enumerate(chunk):
            item = decoded[index]
            results.append(ExplainedFile(source, [], error=item) if isinstance(item, str) else answers[index])
    return results


def unique_name(stem: str, taken: set[str]) -> str:
    name, number = f"{stem}.cam.png", 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}.cam.png"
    taken.add(name)
    return name
