"""The exported graph: the checkpoint's network behind its own mean/std normalisation
(`NormalizedClassifier`), traced by PyTorch's exporter (`torch.onnx.export(..., dynamo=True)`) at a
batch of 2 with a dynamic batch axis, and the metadata the file says about itself (JSON values in
`metadata_props`, read back by `inference.onnx_runtime`)."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import versions
from visionfit.errors import UserError
from visionfit.inference.model import InferenceModel
from visionfit.inference.onnx_runtime import (
    EXPORT_PACKAGES,
    FORMAT_KEY,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAMES,
    TRAINING_DATA_KEYS,
)

logger = logging.getLogger(__name__)

# An ONNX file is one protobuf message, and protobuf cannot serialise more than 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1
# Traced at 2: at a batch of 1, torch.export would specialise the batch axis to that constant.
TRACE_BATCH = 2


class NormalizedClassifier(nn.Module):
    """What an exported graph computes: float RGB in [0, 1] → the checkpoint's mean/std
    normalisation → the network → logits (divided by the checkpoint's temperature, when it was
    calibrated), and their softmax as probabilities."""

    def __init__(self, network: nn.Module, preprocess: Preprocess, temperature: float = 1.0) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network((pixels - self.mean) / self.std)
        if self.temperature != 1.0:  # a constant of the graph: no division op in uncalibrated files
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=1)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def write_onnx(proto: Any, path: Path) -> None:
    """Write an ONNX ModelProto to `path` (one self-contained file)."""
    import onnx

    onnx.save_model(proto, str(path))


def trace(wrapper: NormalizedClassifier, input_size: int, opset: int | None) -> Any:
    """The wrapper as a `torch.onnx.ONNXProgram` with a dynamic batch axis."""
    example = torch.rand(TRACE_BATCH, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            return torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as error:  # torch.export and the exporter raise many types; all mean "cannot"
        raise UserError(f"PyTorch's ONNX exporter cannot export this model ({one_line(error)})") from None


def traced_with_metadata(
    model: InferenceModel, wrapper: NormalizedClassifier, opset: int | None
) -> tuple[Any, int, float]:
    """The exported graph with its metadata as an ONNX ModelProto, its opset and the export time."""
    name, size = model.metadata.get("model", {}).get("name", "model"), model.preprocess.input_size
    logger.info(
        f"exporting {model.source} ({name}, {len(model.classes)} classes, {size}x{size} input) to ONNX"
    )
    started = time.perf_counter()
    program = trace(wrapper, size, opset)
    opset_used = int(program.model.opset_imports.get("", 0))
    if opset is not None and opset_used != opset:  # the exporter falls back instead of failing
        raise UserError(
            f"--opset {opset}: PyTorch's exporter could not convert this model to it (it made opset "
            f"{opset_used}); choose {opset_used} or newer"
        )
    properties = export_properties(model, opset_used)
    program.model.metadata_props.update({key: json.dumps(value) for key, value in properties.items()})
    proto = program.model_proto
    seconds = time.perf_counter() - started
    if proto.ByteSize() >= PROTOBUF_LIMIT:
        raise UserError(
            f"{name} is {proto.ByteSize() / 2**30:.1f} GiB as ONNX, over the 2 GiB a single ONNX file can "
            "hold; visionfit writes self-contained files only"
        )
    logger.info(f"traced with torch.onnx (dynamo, opset {opset_used}) in {seconds:.1f} s")
    return proto, opset_used, seconds


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resize_record(preprocess: Preprocess) -> dict[str, Any]:
    """The resize before the graph, as a person or another program needs it."""
    record: dict[str, Any] = {"mode": preprocess.resize_mode}
    if preprocess.resize_mode == "crop":
        record["shorter_side"] = round(preprocess.input_size / preprocess.crop_fraction)
        record["how"] = "scale the shorter side to shorter_side, then cut the centre input_size square"
    elif preprocess.resize_mode == "letterbox":
        record["how"] = (
            "scale the longer side to input_size, then pad to input_size x input_size, centred, with the "
            "normalization mean colour (round(mean x 255))"
        )
    else:
        record["how"] = "scale straight to input_size x input_size"
    return {
        **record,
        "crop_fraction": preprocess.crop_fraction,
        "interpolation": preprocess.interpolation,
        "antialias": True,
    }


def multilabel_record(model: InferenceModel) -> dict[str, Any]:
    """A multi-label model's export says so: one sigmoid per class, and each class's threshold."""
    if not model.multilabel:
        return {}
    return {
        "task": "multilabel",
        "thresholds": model.thresholds,
        "outputs": {"logits": ["batch", len(model.classes)], "probabilities": "sigmoid of each logit"},
    }


def export_properties(model: InferenceModel, opset: int) -> dict[str, Any]:
    """Everything the file says about itself (`metadata_props`, each value JSON)."""
    preprocess, metadata = model.preprocess, model.metadata
    config = metadata.get("config", {})
    record = metadata.get("model", {})
    size = preprocess.input_size
    assert model.source is not None
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "classes": model.classes,
        "input_size": size,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "shape": ["batch", 3, size, size],
        },
        "resize": resize_record(preprocess),
        "normalization": {"mean": list(preprocess.mean), "std": list(preprocess.std), "in_graph": True},
        "outputs": {"logits": ["batch", len(model.classes)], "probabilities": "softmax of logits"},
        # Temperature scaling (`visionfit calibrate`): the graph's logits are already divided by it.
        "calibration": {
            **metadata.get("calibration", {}),
            "temperature": model.temperature,
            "in_graph": True,
        },
        "model": {key: record[key] for key in ("name", "args", "num_classes") if key in record},
        "test_time_augmentation": {"flip": model.flip, "shift": model.shift, "in_graph": False},
        "source_checkpoint": {
            "file": model.source.name,
            "sha256": file_sha256(model.source),
            "content_sha256": metadata.get("sha256"),
            "epoch": metadata.get("epoch"),
            "test_accuracy": model.test_accuracy,
        },
        "training_data": {key: config[key] for key in TRAINING_DATA_KEYS if key in config},
        **multilabel_record(model),
        "opset": opset,
        "versions": {
            **{key: value for key, value in versions().items() if key in ("visionfit", "torch")},
            **{name: importlib.import_module(name).__version__ for name in EXPORT_PACKAGES},
        },
    }
