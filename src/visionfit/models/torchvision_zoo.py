"""Every classification model torchvision ships, registered under its torchvision name.

Everything comes from torchvision's own model API (`list_models`, `get_model`,
`get_model_weights`), so a torchvision upgrade brings its new architectures without a change here.
Each model is built at its pretrained weights' layout (1000 ImageNet outputs) and then gets its
head for N classes (see `heads.py`), so the from-scratch and the pretrained model are the same
network, and `--head append` means the same thing for both.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.errors import UserError
from visionfit.models.heads import attach_head
from visionfit.models.registry import register_family, register_model

FAMILY = "torchvision"
# Models with auxiliary classifiers: in training mode they return a tuple of logits, which a
# plain cross-entropy loop cannot take, so visionfit always builds them without the aux heads.
AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def default_weights(name: str) -> Any:
    """The weights enum member `--pretrained` loads for `name` (torchvision's DEFAULT)."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def weights_layout_args(name: str, weights: Any) -> dict[str, Any]:
    """Builder arguments that torchvision's own builder sets when it loads `weights`: the network
    must be built exactly that way for the pretrained tensors to fit and to mean the same."""
    args: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if name in AUX_HEADS:
        # the weights expect ImageNet-normalised input re-scaled inside the model, and hold aux heads
        args.update(transform_input=True, aux_logits=True, init_weights=False)
    elif name.startswith("vit_"):
        args["image_size"] = weights.meta["min_size"][0]
    elif name == "maxvit_t":
        args["input_size"] = weights.meta["min_size"]
    return args


def _drop_aux_heads(name: str, model: nn.Module) -> None:
    if name in AUX_HEADS:
        model.aux_logits = False
        for attribute in AUX_HEADS[name]:
            setattr(model, attribute, None)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or a .pth/.pt file read without unpickling code
    (`weights_only=True`), such as the files in torchvision's cache (TORCH_HOME/hub/checkpoints)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors have no common base class
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"--weights {path}: not a readable weights file ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"--weights {path}: expected a state dict of tensors (name → tensor)")
    return state


def download_weights(name: str, weights: Any) -> dict[str, torch.Tensor]:
    """torchvision's own download (progress bar, hash check, cache under TORCH_HOME)."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash a RuntimeError
        reason = str(getattr(error, "reason", "") or error).splitlines()[0]
        raise UserError(
            f"cannot download the pretrained weights of {name} ({weights}) from {weights.url} "
            f"({reason}); offline, pass a local copy with --weights FILE "
            f"(torchvision caches it as {torch.hub.get_dir()}/checkpoints/{Path(weights.url).name})"
        ) from None


def build_torchvision_model(
    name: str,
    num_classes: int,
    *,
    head: str = "replace",
    pretrained_layout: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
    **args: Any,
) -> nn.Module:
    """Build torchvision's `name`, optionally load `state_dict` (in the pretrained layout), then
    give it a `num_classes`-way head.

    `pretrained_layout` builds the network the way torchvision builds it for its pretrained
    weights (`state_dict` implies it); a checkpoint of such a model is rebuilt with it, without
    loading anything.
    """
    weights = default_weights(name)
    if state_dict is not None:
        pretrained_layout = True
    build_args: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if pretrained_layout:
        build_args.update(weights_layout_args(name, weights))
    elif name in AUX_HEADS:
        build_args.update(aux_logits=False, init_weights=True)
    build_args.update(args)
    from torchvision.models import get_model

    model = get_model(name, weights=None, **build_args)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:300]
            raise UserError(
                f"the weights do not fit {name} as torchvision builds it for {weights} ({detail})"
            ) from None
    _drop_aux_heads(name, model)
    return attach_head(model, build_args["num_classes"], num_classes, head)


# Training from scratch, BatchNorm's running statistics must catch up with the batches within the
# run. torchvision builds some models with the momentum of its ImageNet schedules of hundreds of
# epochs (MobileNetV3 0.01, MNASNet 0.0003): after a few hundred steps on a photo folder their
# statistics still hold much of their initial (0, 1), and through dozens of layers that is enough
# for the network in eval mode to give every picture the same logits (mobilenet_v3_small, 8 epochs
# on 800 flower photos: 20.00% test accuracy, chance, while the training loss fell). A network that
# starts from pretrained weights keeps torchvision's momentum: its statistics are already right.
SCRATCH_BATCHNORM_MOMENTUM = 0.1  # PyTorch's default


def follow_batches_from_scratch(model: nn.Module) -> None:
    """Raise each BatchNorm momentum below SCRATCH_BATCHNORM_MOMENTUM to it (training from scratch)."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for module in (module for module in model.modules() if isinstance(module, kinds)):
        if module.momentum is not None and module.momentum < SCRATCH_BATCHNORM_MOMENTUM:
            module.momentum = SCRATCH_BATCHNORM_MOMENTUM


def _register_all() -> None:
    import torchvision
    from torchvision.models import list_models

    for name in list_models(module=torchvision.models):
        weights = default_weights(name)
        transforms = weights.transforms()
        crop, resize = transforms.crop_size[0], transforms.resize_size[0]
        register_model(
            name,
            description=f"torchvision {name} (pretrained: {weights})",
            input_size=crop,
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            family=FAMILY,
            crop_fraction=crop / resize,
            interpolation=transforms.interpolation.value,
            pretrained_weights=str(weights),
            parameter_count=weights.meta["num_params"],
        )(partial(build_torchvision_model, name))


register_family(_register_all)
