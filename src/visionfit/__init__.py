"""visionfit: train, evaluate and use image classifiers with PyTorch.

The public API is imported lazily, so that `import visionfit` (and the CLI's --help) stays fast:
torch loads on first use of a name that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "visionfit.config",
    "build_config": "visionfit.config",
    "UserError": "visionfit.errors",
    "train": "visionfit.training",
    "TrainResult": "visionfit.finishing",
    "load_model": "visionfit.serialization",
    "load": "visionfit.prediction",
    "load_for_inference": "visionfit.inference",
    "InferenceModel": "visionfit.inference",
    "InferenceOptions": "visionfit.inference",
    "Predictor": "visionfit.prediction",
    "save_model": "visionfit.serialization",
    "Preprocess": "visionfit.data.transforms",
    "create_model": "visionfit.models",
    "list_models": "visionfit.models",
    "register_model": "visionfit.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'visionfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
