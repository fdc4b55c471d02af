"""What a checkpoint says about its model, and building a model from it.

A `ModelRecord` names the architecture (a registry name, a torchvision name, or a user's
`file.py:Class` / `package.module:Class`), its builder arguments, its number of classes and its
head, which together rebuild the exact network whose weights the checkpoint holds. The same record
builds the model for training, where pretrained weights are loaded before the head is attached.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.errors import UserError
from visionfit.models import registry
from visionfit.models.custom import (
    check_model_code,
    class_reference,
    create_custom_model,
    file_digest,
    is_custom_reference,
)
from visionfit.models.registry import get_model_spec
from visionfit.models.torchvision_zoo import (
    FAMILY,
    build_torchvision_model,
    default_weights,
    download_weights,
    follow_batches_from_scratch,
    read_weights_file,
)


@dataclass
class ModelRecord:
    """How to rebuild a model: `name` and `args` as the user gave them, plus what was derived."""

    name: str
    num_classes: int
    args: dict[str, Any] = field(default_factory=dict)
    head: str = "replace"
    pretrained: str | None = None  # weights the backbone started from (torchvision name or file)
    pretrained_layout: bool = False  # built the way torchvision builds it for its weights
    source: str = "registry"  # registry, file, module (a user's class) or instance (built by the caller)
    file: str | None = None  # a user model file's absolute path
    file_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelRecord:
        # Checkpoints from before this record held only name, args and num_classes.
        known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
        return cls(**known)

    @property
    def display_name(self) -> str:
        """A short name for run folders: the registry name or the user's class name."""
        return self.name.rpartition(":")[2] if is_custom_reference(self.name) else self.name


_RECORDS: weakref.WeakKeyDictionary[nn.Module, ModelRecord] = weakref.WeakKeyDictionary()


def remember_record(model: nn.Module, record: ModelRecord) -> nn.Module:
    _RECORDS[model] = record
    return model


def record_of(model: nn.Module, num_classes: int | None = None) -> ModelRecord:
    """The record a model was built from, or one describing a foreign instance by its class."""
    if model in _RECORDS:
        return _RECORDS[model]
    if num_classes is None:
        raise UserError(f"{type(model).__name__} was not built by visionfit: pass classes=[...] to save it")
    return ModelRecord(class_reference(model), num_classes, source="instance")


def uses_model_code(record: ModelRecord) -> bool:
    """Whether building the record's model imports a user's file or module (runs its code)."""
    return record.source in ("file", "module") or is_custom_reference(record.name)


def _is_torchvision(name: str) -> bool:
    return not is_custom_reference(name) and get_model_spec(name).family == FAMILY


@dataclass(frozen=True)
class StartingWeights:
    """Where a torchvision model's training starts: torchvision's `pretrained` download or a local
    weights `file`; `load=False` builds the same network without loading them (a resumed run
    loads its checkpoint instead)."""

    pretrained: bool = False
    file: str | None = None
    load: bool = True


def create_training_model(
    name: str,
    num_classes: int,
    args: dict[str, Any],
    *,
    head: str = "replace",
    start: StartingWeights = StartingWeights(),
) -> nn.Module:
    """The model to train, its record remembered; a torchvision model starts from the weights
    `start` names (default: random initialisation)."""
    pretrained, weights, load_weights = start.pretrained, start.file, start.load
    wants_weights = pretrained or weights is not None
    if is_custom_reference(name):
        if wants_weights or head != "replace":
            raise UserError("--pretrained, --weights and --head append are for torchvision models only")
        where, _, _ = name.rpartition(":")
        record = ModelRecord(name, num_classes, dict(args), source="module")
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            record.source, record.file = "file", str(path)
            record.file_sha256 = file_digest(path) if path.is_file() else None
        return remember_record(create_custom_model(name, num_classes, record.args, file=record.file), record)
    spec = get_model_spec(name)
    if spec.family != FAMILY:
        if wants_weights or head != "replace":
            raise UserError(
                f"--pretrained, --weights and --head append are for torchvision models; {name} has no "
                "pretrained weights (see `visionfit models`)"
            )
        record = ModelRecord(name, num_classes, dict(args))
        return remember_record(build_from_record(record), record)
    record = ModelRecord(name, num_classes, dict(args), head=head, pretrained_layout=wants_weights)
    state_dict = None
    if wants_weights:
        record.pretrained = (
            str(Path(weights).expanduser().resolve()) if weights else str(default_weights(name))
        )
        if load_weights:
            state_dict = (
                read_weights_file(weights) if weights else download_weights(name, default_weights(name))
            )
    model = _build(record, state_dict)
    if not wants_weights:
        follow_batches_from_scratch(model)
    return remember_record(model, record)


def create_model(
    name: str,
    num_classes: int,
    *,
    head: str = "replace",
    pretrained: bool = False,
    weights: str | None = None,
    **args: Any,
) -> nn.Module:
    """Build model `name` (registry, torchvision or `file.py:Class`) with a `num_classes`-way
    output; `args` go to its builder. The model remembers how it was built, for `save_model`."""
    start = StartingWeights(pretrained=pretrained, file=weights)
    return create_training_model(name, num_classes, args, head=head, start=start)


def _build(record: ModelRecord, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    try:
        return build_torchvision_model(
            record.name,
            record.num_classes,
            head=record.head,
            pretrained_layout=record.pretrained_layout,
            state_dict=state_dict,
            **record.args,
        )
    except (TypeError, ValueError) as error:
        raise UserError(
            f"cannot build model {record.name} with {record.args or 'its defaults'}: {error}"
        ) from None


def build_from_record(record: ModelRecord, *, model_code: str = "recorded") -> nn.Module:
    """The untrained network a checkpoint's record describes (weights come from the checkpoint).
    A user's class is imported only after `check_model_code` let it under the `model_code` policy."""
    if record.source == "instance":
        raise UserError(
            f"this checkpoint holds a model that was passed to visionfit as an instance ({record.name}); "
            "build it yourself and pass it: load_model(path, model=YourModel(...))"
        )
    if uses_model_code(record):
        check_model_code(record.name, record.file, record.file_sha256, model_code)
        model = create_custom_model(record.name, record.num_classes, record.args, file=record.file)
    elif _is_torchvision(record.name):
        model = _build(record, None)
    else:
        model = registry.build_registered_model(record.name, record.num_classes, **record.args)
    return remember_record(model, record)
