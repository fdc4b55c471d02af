"""From a trained model to a checkpoint and back: the metadata that makes a checkpoint
self-describing, and rebuilding the model from it."""

from __future__ import annotations

import platform
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint import Checkpoint, load_checkpoint
from visionfit.errors import UserError
from visionfit.models import ModelRecord, build_from_record, get_model_spec, record_of
from visionfit.models.record import remember_record

# Classes and preprocessing of the models `load_model` returned, so `save_model` can write them back.
_LOADED: weakref.WeakKeyDictionary[nn.Module, tuple[list[str], Preprocess]] = weakref.WeakKeyDictionary()


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
    *,
    model_name: str,
    model_args: dict[str, Any],
    classes: list[str],
    preprocess: Preprocess,
    model_record: ModelRecord | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """What a checkpoint must say so that it alone rebuilds and feeds the model."""
    record = model_record or ModelRecord(model_name, len(classes), dict(model_args))
    return {
        "model": record.to_dict(),
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


def build_model(checkpoint: Checkpoint, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the checkpoint's architecture (or take `model`, built by the caller) and load its
    weights strictly: every tensor must fit."""
    record = ModelRecord.from_dict(checkpoint.metadata["model"])
    if model is None:
        model = build_from_record(record)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{checkpoint.path}: weights do not fit model {record.name} ({first})") from None
    return model


def load_model(
    path: str | Path, *, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a visionfit checkpoint as an `nn.Module` in eval mode on `device`.

    Registry and torchvision models are rebuilt by name; a user's `file.py:Class` needs that file
    again. A model that was trained as an instance (`train(config, model=...)`) is rebuilt by the
    caller: pass it as `model`, and the checkpoint's weights are loaded into it.
    """
    checkpoint = load_checkpoint(path, device="cpu")
    loaded = build_model(checkpoint, model)
    remember_record(loaded, ModelRecord.from_dict(checkpoint.metadata["model"]))
    _LOADED[loaded] = (checkpoint.classes, Preprocess.from_dict(checkpoint.metadata["preprocess"]))
    return loaded.to(device).eval()


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    classes: list[str] | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Save `model` as a visionfit checkpoint (safetensors weights + JSON metadata, no pickle).

    A model from `load_model` or `create_model` keeps its classes and preprocessing unless given;
    any other `nn.Module` needs `classes` (its class is recorded as `module:Class`, and loading it
    back needs `load_model(path, model=...)`).
    """
    from visionfit.engine.checkpoint import SUFFIX, save_checkpoint

    plain = unwrap_model(model)
    path = Path(path).expanduser()
    if path.suffix != SUFFIX:
        raise UserError(f"save_model: {path} must end in {SUFFIX}")
    known_classes, known_preprocess = _LOADED.get(plain, (None, None))
    classes = classes or known_classes
    record = record_of(plain, len(classes) if classes else None)
    classes = classes or [str(index) for index in range(record.num_classes)]
    if len(classes) != record.num_classes:
        raise UserError(f"save_model: {len(classes)} class names for a {record.num_classes}-way model")
    preprocess = preprocess or known_preprocess or _default_preprocess(record)
    metadata = checkpoint_metadata(
        model_name=record.name,
        model_args=record.args,
        classes=classes,
        preprocess=preprocess,
        model_record=record,
    )
    save_checkpoint(path, plain.state_dict(), metadata)
    return path


def _default_preprocess(record: ModelRecord) -> Preprocess:
    if record.source != "registry":
        raise UserError("save_model: pass preprocess=Preprocess(...) for a model outside the registry")
    spec = get_model_spec(record.name)
    return Preprocess(spec.input_size, spec.mean, spec.std, "crop", spec.crop_fraction, spec.interpolation)
