"""Model registry; importing this package registers every built-in architecture: the tutorial's
CNN and every torchvision classification model by its torchvision name."""

from visionfit.models import airnet as _airnet  # noqa: F401  (registers airnet)
from visionfit.models import quick as _quick  # noqa: F401  (registers cifar10-quick)
from visionfit.models import torchvision_zoo as _torchvision_zoo  # noqa: F401  (registers the zoo)
from visionfit.models.record import (
    ModelRecord,
    StartingWeights,
    build_from_record,
    create_model,
    create_training_model,
    record_of,
)
from visionfit.models.registry import (
    ModelSpec,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelRecord",
    "ModelSpec",
    "StartingWeights",
    "build_from_record",
    "create_model",
    "create_training_model",
    "get_model_spec",
    "list_models",
    "record_of",
    "register_model",
]
