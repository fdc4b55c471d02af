"""The model registry: every trainable architecture by name, with the input it expects.

`register_model` raises on a duplicate name and `build_registered_model` on an unknown one, so a typo is an
error with a suggestion, never a silently different network.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from visionfit.errors import UserError, did_you_mean

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: how to build it and what input it was designed for."""

    name: str
    builder: ModelBuilder
    description: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str = "visionfit"
    # Preprocessing beyond size and normalisation: the share of the resized image kept by the
    # centre crop (224/256 for most ImageNet models) and the resize interpolation.
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    pretrained_weights: str | None = None  # name of the weights `--pretrained` loads, if any
    parameter_count: int | None = None  # known without building the model (torchvision's meta)

    def accepted_args(self) -> set[str] | None:
        """Builder arguments besides num_classes; None when the builder takes any (**kwargs)."""
        parameters = inspect.signature(self.builder).parameters
        if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
            return None
        return {name for name in parameters if name != "num_classes"}


_REGISTRY: dict[str, ModelSpec] = {}
# Families whose models register only when a name is not found or the whole list is asked for:
# listing torchvision's hundred models imports torchvision, which takes a second at every start.
_FAMILIES: list[Callable[[], None]] = []


def register_family(register: Callable[[], None]) -> None:
    """`register()` registers a family's models when they are first needed."""
    _FAMILIES.append(register)


def _register_families() -> None:
    while _FAMILIES:
        _FAMILIES.pop(0)()


def register_model(
    name: str,
    *,
    description: str,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    family: str = "visionfit",
    **details: Any,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering `builder(num_classes, **args) -> nn.Module` under `name`.

    `details` sets the optional ModelSpec fields (crop_fraction, interpolation, ...)."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, description, input_size, mean, std, family, **details)
        return builder

    return decorate


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        _register_families()
    if name not in _REGISTRY:
        raise UserError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; `visionfit models` lists the choices"
        )
    return _REGISTRY[name]


def list_models() -> list[ModelSpec]:
    _register_families()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def build_registered_model(name: str, num_classes: int, **args: Any) -> nn.Module:
    """Build the registered model `name` with a `num_classes`-way output."""
    spec = get_model_spec(name)
    accepted = spec.accepted_args()
    unknown = [] if accepted is None else sorted(set(args) - accepted)
    if unknown and accepted is not None:
        choices = ", ".join(sorted(accepted)) or "none"
        raise UserError(
            f"model {name} takes no argument {unknown[0]!r}"
            f"{did_you_mean(unknown[0], accepted)}; its arguments: {choices}"
        )
    try:
        return spec.builder(num_classes=num_classes, **args)
    except (TypeError, ValueError) as error:
        raise UserError(f"cannot build model {name} with {args or 'its defaults'}: {error}") from None


def count_parameters(name: str, num_classes: int = 10) -> int:
    """Parameters of model `name`: as registered when known (torchvision's count, with its
    ImageNet head), else counted on the meta device: no memory, no initialisation."""
    import torch

    known = get_model_spec(name).parameter_count
    if known is not None:
        return known
    with torch.device("meta"):
        model = build_registered_model(name, num_classes)
    return sum(parameter.numel() for parameter in model.parameters())
