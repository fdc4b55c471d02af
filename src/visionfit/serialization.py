"""The Python API's checkpoint files: `save_model(model, path)` writes a visionfit checkpoint of any
model, and `load_model(path)` returns one as a plain `nn.Module`, through the one inference loader."""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.errors import UserError
from visionfit.inference import InferenceOptions, load_for_inference
from visionfit.models import ModelRecord, get_model_spec, record_of
from visionfit.runtime import unwrap_model

# Classes and preprocessing of the models `load_model` returned, so `save_model` can write them back.
_LOADED: weakref.WeakKeyDictionary[nn.Module, tuple[list[str], Preprocess]] = weakref.WeakKeyDictionary()


def load_model(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    model_code: str = "recorded",
) -> nn.Module:
    """Load a visionfit checkpoint as an `nn.Module` in eval mode on `device`, in float32.

    Registry and torchvision models are rebuilt by name; a user's `file.py:Class` needs that file
    again, and runs it (refused when it is not the file training used, unless
    `model_code="trust"`; `"refuse"` refuses any code). A model that was trained as an instance
    (`train(config, model=...)`) is rebuilt by the caller: pass it as `model`, and the checkpoint's
    weights are loaded into it.
    """
    options = InferenceOptions(
        device=str(device), precision="fp32", channels_last="off", model_code=model_code
    )
    loaded = load_for_inference(path, options, model=model)
    _LOADED[loaded.model] = (loaded.classes, loaded.preprocess)
    return loaded.model


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
    from visionfit.engine.checkpoint_file import SUFFIX, checkpoint_metadata, save_checkpoint

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
    save_checkpoint(path, plain.state_dict(), checkpoint_metadata(record, classes, preprocess))
    return path


def _default_preprocess(record: ModelRecord) -> Preprocess:
    if record.source != "registry":
        raise UserError("save_model: pass preprocess=Preprocess(...) for a model outside the registry")
    return Preprocess.for_model(get_model_spec(record.name))
