"""Classification heads, found and changed generically.

The tutorial does it by hand for VGG16: `classifier[6] = Linear(4096, 10)` ("replace") or
`classifier.add_module("add_linear", Linear(1000, 10))` ("append"). Here the final classification
layer is found in any network: the last Linear (or SqueezeNet's 1x1 Conv2d) with the expected
number of outputs, in registration order, which is where every torchvision model keeps its head.
"""

from __future__ import annotations

from torch import nn

from visionfit.choices import HEAD_MODES
from visionfit.errors import UserError

APPENDED_NAME = "add_linear"  # the tutorial's own name for the appended layer


def output_width(module: nn.Module) -> int | None:
    """How many outputs a layer that can be a classifier has (None for other layers)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return module.out_channels
    return None


def find_classifier(model: nn.Module, num_outputs: int) -> str:
    """The dotted name of the model's final classification layer with `num_outputs` outputs."""
    found = [name for name, module in model.named_modules() if output_width(module) == num_outputs and name]
    if not found:
        raise UserError(
            f"cannot find the classification layer of {type(model).__name__}: no Linear layer "
            f"with {num_outputs} outputs"
        )
    return found[-1]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _new_layer(like: nn.Module, in_width: int, num_classes: int) -> nn.Module:
    if isinstance(like, nn.Conv2d):
        return nn.Conv2d(in_width, num_classes, kernel_size=1)
    return nn.Linear(in_width, num_classes)


def replace_head(model: nn.Module, num_outputs: int, num_classes: int) -> nn.Module:
    """Swap the final `num_outputs`-way layer for a fresh `num_classes`-way one of the same kind."""
    name = find_classifier(model, num_outputs)
    old = model.get_submodule(name)
    in_width = old.in_features if isinstance(old, nn.Linear) else old.in_channels
    layer = _new_layer(old, in_width, num_classes)
    _set_submodule(model, name, layer.to(next(old.parameters()).device))
    return model


def append_head(model: nn.Module, num_outputs: int, num_classes: int) -> nn.Module:
    """Keep the `num_outputs`-way layer and add a `num_outputs → num_classes` layer after it.

    When that layer ends an `nn.Sequential` (VGG's classifier), the new one is added to it as
    `add_linear`, exactly as in the tutorial; elsewhere the layer becomes `Sequential(layer, new)`.
    """
    name = find_classifier(model, num_outputs)
    old = model.get_submodule(name)
    layer = _new_layer(old, num_outputs, num_classes).to(next(old.parameters()).device)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential) and list(parent._modules)[-1] == child:
        parent.add_module(APPENDED_NAME, layer)
    else:
        _set_submodule(model, name, nn.Sequential(old, layer))
    return model


def attach_head(model: nn.Module, num_outputs: int, num_classes: int, head: str) -> nn.Module:
    """Give a `num_outputs`-way model a `num_classes`-way head (`head`: replace or append)."""
    if head not in HEAD_MODES:
        raise UserError(f"--head must be one of {', '.join(HEAD_MODES)}, got {head!r}")
    if head == "replace":
        return replace_head(model, num_outputs, num_classes)
    return append_head(model, num_outputs, num_classes)
