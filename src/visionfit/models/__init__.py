"""Model registry; importing this package registers every built-in architecture."""

from visionfit.models import airnet as _airnet  # noqa: F401  (registers airnet)
from visionfit.models import quick as _quick  # noqa: F401  (registers cifar10-quick)
from visionfit.models.registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
