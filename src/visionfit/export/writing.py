"""`visionfit export`: a checkpoint as one self-contained ONNX file that carries its classes and
preprocessing, verified against PyTorch before it is written.

Exported models lose accuracy outside their tool in three ways: the preprocessing is re-typed by
hand and differs, the class names are lost, the batch axis comes out fixed. Here the graph
(`export.graph`) starts with the checkpoint's own mean/std normalisation, so its input is what
every image library gives — float RGB in [0, 1], NCHW, at the input size; the resize that comes
before is recorded in the file's metadata (JSON values), with the classes in order; the graph has
a dynamic batch axis. Every export passes `onnx.checker`'s full check and matches PyTorch's float32
logits on onnxruntime at batch 1, 2 and 7 (`export.checks`) — on real images of the checkpoint's
dataset when they are on this machine — before it is renamed into place; a failed check leaves no
file behind.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from visionfit.data.registry import DataSplits
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.engine.checkpoint_file import atomic_write
from visionfit.errors import UserError
from visionfit.export.checks import VERIFY_BATCHES, Comparison, verify_float
from visionfit.export.graph import NormalizedClassifier, traced_with_metadata, write_onnx
from visionfit.inference import InferenceOptions, load_for_inference
from visionfit.inference.model import InferenceModel
from visionfit.inference.onnx_runtime import EXPORT_PACKAGES, INSTALL_HINT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """What `visionfit export` writes: the format (onnx), the opset (None: the exporter's), int8
    quantization (None or "int8") calibrated on `calibration_images` training images, and the data
    of the checks (`dataset`/`data_dir`; default: the checkpoint's own, when they are here)."""

    format_name: str = "onnx"
    opset: int | None = None
    quantize: str | None = None
    calibration_images: int = 300
    dataset: str | None = None
    data_dir: str | None = None


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


def local_data(model: InferenceModel, options: ExportOptions) -> DataSplits | None:
    """The checkpoint's dataset (or the one named) if it is on this machine: export never downloads.
    Data the user named must load; the checkpoint's own may be gone (then None), unless int8
    quantization needs them."""
    named = options.dataset is not None or options.data_dir is not None
    config = model.metadata.get("config", {})
    recorded = config.get("dataset") is not None or config.get("data_dir") is not None
    data = None
    if named or recorded:
        try:
            data = model.training_data(options.dataset, options.data_dir, download=False)
        except UserError:
            if named:
                raise
    if data is None and options.quantize:
        raise UserError(
            f"--quantize {options.quantize} needs training images, but the checkpoint's data are not on "
            "this machine; name them with --dataset/--data-dir"
        )
    return data


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


def check_options(out: Path, options: ExportOptions) -> None:
    if options.format_name != "onnx":
        raise UserError(f"--format must be onnx, got {options.format_name!r}")
    if options.quantize not in (None, "int8"):
        raise UserError(f"--quantize must be int8, got {options.quantize!r}")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: the file name must end in .onnx (visionfit recognises exports by it)")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the .onnx file to write")


def export_onnx(
    source: str | Path,
    out: str | Path | None = None,
    options: ExportOptions | None = None,
    inference: InferenceOptions | None = None,
) -> ExportResult:
    """Export a checkpoint (file or run folder) to `out` (default: beside it, `.onnx`, or
    `.int8.onnx` with `quantize="int8"`), verify it, and only then put it in place.

    The checks run on real test images of `options.dataset`/`data_dir` (default: the checkpoint's
    own, when they are on this machine; random inputs otherwise). `quantize="int8"` writes a
    statically quantized model calibrated on `calibration_images` training images, and compares
    its test accuracy and speed with the float model's (`export.quantization`). The model is
    loaded on the CPU in float32 whatever `inference` says; its `model_code` policy applies. Each
    step is logged (`logging`, the `visionfit.export` loggers).
    """
    options = options or ExportOptions()
    require_export_packages()
    inference = replace(inference or InferenceOptions(), device="cpu", precision="fp32", channels_last="off")
    model = load_for_inference(source, inference)
    assert model.source is not None
    out_path = Path(out).expanduser() if out is not None else default_out(model.source, options.quantize)
    check_options(out_path, options)
    data = local_data(model, options)
    wrapper = NormalizedClassifier(model.model, model.preprocess, model.temperature).eval()
    proto, opset_used, seconds = traced_with_metadata(model, wrapper, options.opset)
    pixels, images = verification_images(data, model.preprocess)
    results: dict[str, Any] = {}

    def write_verified(temp: Path) -> None:  # atomic_write renames `temp` only when this returns
        if options.quantize and data is not None:
            from visionfit.export.quantization import write_int8_export

            reference = (wrapper, pixels, images)
            results.update(write_int8_export(proto, temp, model, data, options.calibration_images, reference))
        else:
            write_onnx(proto, temp)
            results["verification"] = verify_float(temp, wrapper, pixels, images)

    atomic_write(out_path, write_verified)
    size_bytes = out_path.stat().st_size
    logger.info(f"wrote {out_path} ({size_bytes / 1e6:.1f} MB), verified")
    name = model.metadata.get("model", {}).get("name", "model")
    return ExportResult(out_path, name, seconds, size_bytes, opset_used, **results)
