"""From a trained model to a checkpoint and back: the metadata that makes a checkpoint
self-describing, and rebuilding the model from it."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint import Checkpoint, load_checkpoint
from visionfit.errors import UserError
from visionfit.models import create_model


def versions() -> dict[str, str]:
    import torchvision

    from visionfit import __version__

    return {
        "visionfit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def checkpoint_metadata(
    *, model_name: str, model_args: dict[str, Any], classes: list[str], preprocess: Preprocess, **fields: Any
) -> dict[str, Any]:
    """What a checkpoint must say so that it alone rebuilds and feeds the model."""
    return {
        "model": {"name": model_name, "args": dict(model_args), "num_classes": len(classes)},
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **fields,
    }


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers, whose state-dict keys carry no
    `_orig_mod.` or `module.` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_model(checkpoint: Checkpoint) -> nn.Module:
    """Rebuild the checkpoint's architecture and load its weights (strictly: every tensor must fit)."""
    spec = checkpoint.metadata["model"]
    model = create_model(spec["name"], spec["num_classes"], **spec.get("args", {}))
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{checkpoint.path}: weights do not fit model {spec['name']} ({first})") from None
    return model


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a visionfit checkpoint as an `nn.Module` in eval mode on `device`."""
    checkpoint = load_checkpoint(path, device="cpu")
    return build_model(checkpoint).to(device).eval()
