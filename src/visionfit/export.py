"""`visionfit export`: a checkpoint as one self-contained ONNX file that carries its classes and
preprocessing, verified against PyTorch before it is written.

Exported models lose accuracy outside their tool in three ways: the preprocessing is re-typed by
hand and differs, the class names are lost, the batch axis comes out fixed. Here the graph starts
with the checkpoint's own mean/std normalisation (`NormalizedClassifier`), so its input is what
every image library gives — float RGB in [0, 1], NCHW, at the input size; the resize that comes
before is recorded in the file's metadata (JSON values), with the classes in order; the graph is
traced by PyTorch's own exporter (`torch.onnx.export(..., dynamo=True)`) at a batch of 2 with a
dynamic batch axis. Every export passes `onnx.checker`'s full check and matches PyTorch's float32
logits on onnxruntime at batch 1, 2 and 7 — on real images of the checkpoint's dataset when they
are on this machine — before it is renamed into place; a failed check leaves no file behind.
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visionfit.data.registry import DataSplits, load_data
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.engine.checkpoint import atomic_write
from visionfit.errors import UserError
from visionfit.inference import load_for_inference
from visionfit.inference_model import InferenceModel
from visionfit.onnx_checks import (
    VERIFY_BATCHES,
    Comparison,
    NormalizedClassifier,
    one_line,
    save_model,
    verify_float,
)
from visionfit.onnx_model import EXPORT_PACKAGES, INPUT_NAME, INSTALL_HINT, OUTPUT_NAMES, export_properties

# An ONNX file is one protobuf message, and protobuf cannot serialise more than 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1
# Traced at 2: at a batch of 1, torch.export would specialise the batch axis to that constant.
TRACE_BATCH = 2


def require_export_packages() -> None:
    """onnx, onnxscript and onnxruntime (the `export` extra), or one line saying how to get them."""
    missing = []
    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"visionfit export needs {', '.join(missing)}, not installed: {INSTALL_HINT}")


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


def local_data(
    model: InferenceModel, dataset: str | None, data_dir: str | None, needed_for: str | None = None
) -> DataSplits | None:
    """The checkpoint's dataset (or the one named) if it is on this machine: export never downloads.
    Data the user named must load; the checkpoint's own may be gone (then None), unless the data
    are `needed_for` something."""
    config = model.metadata.get("config", {})
    named = dataset is not None or data_dir is not None
    if not named:
        dataset, data_dir = config.get("dataset"), config.get("data_dir")
    data = None
    if dataset is not None or data_dir is not None:
        data = _load_quietly(dataset, data_dir, config, must=named)
    if data is None and needed_for:
        raise UserError(
            f"{needed_for} needs training images, but the checkpoint's data are not on this machine; "
            "name them with --dataset/--data-dir"
        )
    return data


def _load_quietly(
    dataset: str | None, data_dir: str | None, config: dict[str, Any], *, must: bool
) -> DataSplits | None:
    try:
        return load_data(
            dataset,
            data_dir,
            val_fraction=config.get("val_fraction", 0.1),
            seed=config.get("seed", 0),
            notify=lambda _: None,
            download=False,
        )
    except UserError:
        if must:
            raise
        return None


def verification_images(data: DataSplits | None, preprocess: Preprocess) -> tuple[torch.Tensor, str]:
    """Float [0, 1] pictures for the checks: test images spread over the split (a folder dataset
    lists its files class by class), else seeded random pixels; and what they are, in words."""
    count, size = sum(VERIFY_BATCHES), preprocess.input_size
    if data is None or not len(data.test):
        generator = torch.Generator().manual_seed(0)
        return torch.rand(count, 3, size, size, generator=generator), f"{count} random inputs"
    reader, last = PictureReader(preprocess), len(data.test) - 1
    indices = [round(number * last / (count - 1)) for number in range(count)]
    pictures = torch.stack([reader(data.test.picture(index)) for index in indices])
    return pictures.float() / 255, f"{count} test images of {data.description}"


@dataclass
class ExportResult:
    """What `export_onnx` wrote and measured."""

    path: Path
    model_name: str
    seconds: float
    size_bytes: int
    opset: int
    verification: Comparison  # of the float32 graph against PyTorch
    quantization: Any = None  # quantization.QuantizationReport with --quantize int8


def default_out(source: Path, quantize: str | None) -> Path:
    return source.with_suffix(f".{quantize}.onnx" if quantize else ".onnx")


def check_options(out: Path, format_name: str, quantize: str | None) -> None:
    if format_name != "onnx":
        raise UserError(f"--format must be onnx, got {format_name!r}")
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize must be int8, got {quantize!r}")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: the file name must end in .onnx (visionfit recognises exports by it)")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the .onnx file to write")


def export_onnx(
    source: str | Path,
    out: str | Path | None = None,
    *,
    format_name: str = "onnx",
    opset: int | None = None,
    quantize: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    calibration_images: int = 300,
    trust_model_code: bool = False,
    notify: Callable[[str], None] = print,
) -> ExportResult:
    """Export a checkpoint (file or run folder) to `out` (default: beside it, `.onnx`, or
    `.int8.onnx` with `quantize="int8"`), verify it, and only then put it in place.

    The checks run on real test images of `dataset`/`data_dir` (default: the checkpoint's own,
    when they are on this machine; random inputs otherwise). `quantize="int8"` writes a statically
    quantized model calibrated on `calibration_images` training images, and compares its test
    accuracy and speed with the float model's (`quantization`). `notify` gets each step's line.
    """
    require_export_packages()
    model = load_for_inference(
        source, device="cpu", precision="fp32", channels_last="off", trust_model_code=trust_model_code
    )
    assert model.source is not None
    out_path = Path(out).expanduser() if out is not None else default_out(model.source, quantize)
    check_options(out_path, format_name, quantize)
    data = local_data(model, dataset, data_dir, needed_for="--quantize int8" if quantize else None)
    wrapper = NormalizedClassifier(model.model, model.preprocess).eval()
    proto, opset_used, seconds = traced_with_metadata(model, wrapper, opset, notify)
    pixels, images = verification_images(data, model.preprocess)
    results: dict[str, Any] = {}

    def write_verified(temp: Path) -> None:  # atomic_write renames `temp` only when this returns
        if quantize and data is not None:
            from visionfit.quantization import write_int8_export

            reference = (wrapper, pixels, images)
            results.update(write_int8_export(proto, temp, model, data, calibration_images, reference, notify))
        else:
            save_model(proto, temp)
            results["verification"] = verify_float(temp, wrapper, pixels, images, notify)

    atomic_write(out_path, write_verified)
    size_bytes = out_path.stat().st_size
    notify(f"wrote {out_path} ({size_bytes / 1e6:.1f} MB), verified")
    name = model.metadata.get("model", {}).get("name", "model")
    return ExportResult(out_path, name, seconds, size_bytes, opset_used, **results)


def traced_with_metadata(
    model: InferenceModel, wrapper: NormalizedClassifier, opset: int | None, notify: Callable[[str], None]
) -> tuple[Any, int, float]:
    """The exported graph with its metadata as an ONNX ModelProto, its opset and the export time."""
    name, size = model.metadata.get("model", {}).get("name", "model"), model.preprocess.input_size
    notify(f"exporting {model.source} ({name}, {len(model.classes)} classes, {size}x{size} input) to ONNX")
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
    notify(f"traced with torch.onnx (dynamo, opset {opset_used}) in {seconds:.1f} s")
    return proto, opset_used, seconds
