"""`visionfit export --quantize int8`: static int8 quantization with onnxruntime's own tools,
calibrated on training images, measured against the float model before it is written.

The calibration images go through `prediction.picture_pixels`, the one preprocessing of every
prediction, so the activation ranges are those the model will see. The format is onnxruntime's
recommended one for CPUs (QDQ, uint8 activations, int8 weights per output channel); the softmax
that turns logits into probabilities stays in float, where 8 bits would round small probabilities
to zero. The int8 file keeps the float export's metadata and adds a "quantization" record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionfit.data.loaders import eval_loader
from visionfit.data.registry import DataSplits
from visionfit.data.samples import Samples
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.engine.loops import evaluate
from visionfit.errors import UserError
from visionfit.evaluation import check_classes
from visionfit.export.checks import Comparison, check_graph, compare_with_torch, run_in_batches, verify_float
from visionfit.export.graph import NormalizedClassifier, write_onnx
from visionfit.inference.model import InferenceModel
from visionfit.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, load_onnx, open_session
from visionfit.inference.options import InferenceOptions
from visionfit.prediction import picture_pixels, stack_pixels

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 16
SPEED_BATCH = 64  # images per onnxruntime call when timing: a predict batch, not a single image
SPEED_SECONDS = 1.0


class PictureCalibration:
    """onnxruntime's CalibrationDataReader protocol (`get_next`, its `__subclasshook__` accepts any
    such object) over training pictures, in batches, as float RGB in [0, 1]."""

    def __init__(self, samples: Samples, indices: list[int], preprocess: Preprocess) -> None:
        self.samples, self.preprocess = samples, preprocess
        self.chunks = iter(
            [indices[at : at + CALIBRATION_BATCH] for at in range(0, len(indices), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self.chunks, None)
        if chunk is None:
            return None
        pixels = stack_pixels(
            [picture_pixels(self.samples.picture(index), self.preprocess) for index in chunk]
        )
        return {INPUT_NAME: (pixels.float() / 255).numpy()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer warns on the root logger about every tensor it leaves in float."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_file(float_path: Path, int8_path: Path, calibration: PictureCalibration) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    operators = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - {"Softmax"})
    with tempfile.TemporaryDirectory() as folder, quiet_root_logger():
        prepared = Path(folder) / "prepared.onnx"
        # Shape inference and graph optimisation first, as onnxruntime advises; its symbolic shape
        # inference (for transformers) fails on the exporter's graphs and is not needed here.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            calibration,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=operators,
        )


def rewrite_metadata(path: Path, quantization: dict[str, Any]) -> None:
    """Add the quantization record, and keep every value JSON (the quantizer adds plain-text notes)."""
    import onnx

    proto = onnx.load(str(path))
    properties = {entry.key: entry.value for entry in proto.metadata_props}
    for key, value in properties.items():
        try:
            json.loads(value)
        except ValueError:
            properties[key] = json.dumps(value)
    properties["quantization"] = json.dumps(quantization)
    onnx.helper.set_model_props(proto, properties)
    onnx.save_model(proto, str(path))


@dataclass
class QuantizationReport:
    """The int8 model next to the float one: test accuracy, top-1 agreement, images/s."""

    calibration_images: int
    test_images: int
    float_accuracy: float
    int8_accuracy: float
    agreement: float  # share of test images where int8 and float predict the same class
    float_speed: float  # images/s, one pass at batch SPEED_BATCH on onnxruntime
    int8_speed: float
    max_difference: float  # largest logit difference from PyTorch on the verification images

    def table(self) -> str:
        rows = [
            f"{'':8}{'test accuracy':>15}{'images/s':>12}",
            f"{'float32':8}{self.float_accuracy:>15.2%}{self.float_speed:>12,.0f}",
            f"{'int8':8}{self.int8_accuracy:>15.2%}{self.int8_speed:>12,.0f}",
        ]
        return "\n".join(rows)


def measure(path: Path, data: DataSplits) -> tuple[float, torch.Tensor, float]:
    """Test accuracy (with the recorded test-time augmentation, as eval does), every test image's
    predicted class, and one-pass images/s of an ONNX file."""
    model = load_onnx(path, InferenceOptions(device="cpu"))
    reader = PictureReader(model.preprocess)
    batches = eval_loader(data.test, reader, batch_size=256, workers=0, device=torch.device("cpu"))
    evaluation = evaluate(model.classifier, batches, len(model.classes), keep="predictions")
    assert evaluation.predictions is not None
    accuracy = evaluation.sums.report(model.classes)["accuracy"]
    pixels = torch.stack([reader(data.test.picture(index % len(data.test))) for index in range(SPEED_BATCH)])
    pixels = pixels.float() / 255
    model.network(pixels)  # onnxruntime plans its memory on the first call
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < SPEED_SECONDS:
        model.network(pixels)
        runs += 1
    speed = runs * len(pixels) / (time.perf_counter() - started)
    return accuracy, evaluation.predictions.predicted, speed


def write_int8_export(
    proto: Any,
    int8_path: Path,
    model: InferenceModel,
    data: DataSplits,
    calibration_images: int,
    reference: tuple[NormalizedClassifier, torch.Tensor, str],
) -> dict[str, Any]:
    """The float export `proto` verified as every export is (in a temporary folder), then quantized
    into `int8_path`: `ExportResult`'s verification and quantization fields."""
    wrapper, pixels, images = reference
    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder) / "float.onnx"
        write_onnx(proto, float_path)
        verification = verify_float(float_path, wrapper, pixels, images)
        report = write_int8(float_path, int8_path, model, data, calibration_images, reference)
    return {"verification": verification, "quantization": report}


def write_int8(
    float_path: Path,
    int8_path: Path,
    model: InferenceModel,
    data: DataSplits,
    calibration_images: int,
    reference: tuple[NormalizedClassifier, torch.Tensor, str],
) -> QuantizationReport:
    """Quantize the verified float export at `float_path` into `int8_path`, check the int8 graph
    (full check, runs at batch 1, 2 and 7 like one batch, finite) and compare it with the float
    model on the test split. Raises `UserError` when a check fails."""
    check_classes(data.classes, model.classes, data.description)
    if not len(data.train) or not len(data.test):
        raise UserError(f"--quantize int8 needs training and test images; {data.description} lacks some")
    indices = random.Random(0).sample(range(len(data.train)), min(calibration_images, len(data.train)))
    logger.info(f"quantizing to int8, calibrated on {len(indices)} training images of {data.description}")
    quantize_file(float_path, int8_path, PictureCalibration(data.train, indices, model.preprocess))
    wrapper, pixels, images = reference
    comparison = compare_with_torch(int8_path, wrapper, pixels, images)
    check_int8_runs(int8_path, pixels, comparison)
    logger.info(comparison.describe("PyTorch float32"))
    logger.info(f"testing float32 and int8 on the {len(data.test)} test images of {data.description}")
    float_accuracy, float_predicted, float_speed = measure(float_path, data)
    int8_accuracy, int8_predicted, int8_speed = measure(int8_path, data)
    report = QuantizationReport(
        len(indices),
        len(data.test),
        float_accuracy,
        int8_accuracy,
        float((float_predicted == int8_predicted).float().mean()),
        float_speed,
        int8_speed,
        comparison.max_difference,
    )
    rewrite_metadata(int8_path, quantization_record(report, data.description))
    check_graph(int8_path)
    logger.info(report.table())
    logger.info(f"int8 agrees with float32 on {report.agreement:.2%} of the test images")
    return report


def quantization_record(report: QuantizationReport, calibration_data: str) -> dict[str, Any]:
    """What the int8 file says about its quantization (its "quantization" metadata)."""
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8",
        "calibration_images": report.calibration_images,
        "calibration_data": calibration_data,
        "test_accuracy": report.int8_accuracy,
        "float_test_accuracy": report.float_accuracy,
    }


def check_int8_runs(path: Path, pixels: torch.Tensor, comparison: Comparison) -> None:
    """int8 logits differ from float ones by design; what must hold is that they are finite and
    that an image's result does not depend on the batch it came in."""
    whole = open_session(path, "cpu").run([OUTPUT_NAMES[0]], {INPUT_NAME: pixels.numpy()})[0]
    batched, _ = run_in_batches(path, pixels)
    spread = float(np.abs(whole - batched).max()) if np.isfinite(batched).all() else float("inf")
    if not np.isfinite(comparison.max_difference) or not spread <= comparison.tolerance:
        raise UserError(
            f"the int8 graph gives non-finite or batch-dependent logits (difference {spread:.2g} between "
            "batch 10 and batches 1, 2, 7); nothing written"
        )
