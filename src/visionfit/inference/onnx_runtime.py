"""Exported ONNX files as visionfit models: their metadata (the keys `visionfit export` writes,
`export.graph`, and how they are read back), and running them on onnxruntime behind the same
`InferenceModel` a checkpoint gives.

`visionfit export` writes the graph to take float RGB in [0, 1], NCHW, at the input size, with the
checkpoint's mean/std normalisation inside it. So an exported file's `prepare` only scales the
pixels that `prediction.picture_pixels` made (the one resize of every prediction) from 0–255 to
[0, 1]; predict, eval and `visionfit.load` then run it exactly as they run a checkpoint, test-time
augmentation included. The metadata lives in the file's `metadata_props`, every value JSON, so
that plain onnxruntime reads it too (`session.get_modelmeta().custom_metadata_map`).

A file without that metadata (someone else's classifier) runs when the caller names its classes
(and its input size, when the graph does not fix it): it is fed the same [0, 1] RGB pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionfit.config.fields import DATA_OPTIONS
from visionfit.config.validation import check_device_name
from visionfit.data.transforms import Preprocess
from visionfit.errors import UserError
from visionfit.inference.model import InferenceModel, check_test_time_shift
from visionfit.inference.options import InferenceOptions
from visionfit.runtime import Runtime

FORMAT_KEY = "visionfit_format"
FORMAT_VERSION = 1
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")
INSTALL_HINT = 'pip install "visionfit[export]"'
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# What `visionfit eval model.onnx` needs to find the training data (and its held-out split) by default.
TRAINING_DATA_KEYS = (*DATA_OPTIONS, "seed")  # train's data options, and the seed of its splits
# The keys every visionfit export has; the rest (model, source checkpoint, versions...) inform.
REQUIRED_KEYS = ("classes", "input_size", "resize", "normalization")


def import_onnxruntime(purpose: str) -> Any:
    """onnxruntime, or one line saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{purpose} needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def read_metadata(properties: Mapping[str, str], path: Path) -> dict[str, Any] | None:
    """The visionfit metadata of a file's `metadata_props` (JSON values), or None when it has none."""
    if FORMAT_KEY not in properties:
        return None
    metadata: dict[str, Any] = {}
    for key, value in properties.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            if key in (FORMAT_KEY, *REQUIRED_KEYS):
                raise UserError(f"{path} has damaged visionfit metadata ({key} is not JSON)") from None
            metadata[key] = value  # another tool's note
    if not isinstance(metadata[FORMAT_KEY], int) or metadata[FORMAT_KEY] > FORMAT_VERSION:
        raise UserError(
            f"{path} was exported by a newer visionfit (format {metadata[FORMAT_KEY]}); upgrade visionfit"
        )
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise UserError(
            f"{path} has incomplete visionfit metadata (no {', '.join(missing)}); export it again"
        )
    return metadata


def preprocess_of(metadata: Mapping[str, Any], path: Path) -> Preprocess:
    """The checkpoint's `Preprocess`, rebuilt from an export's metadata."""
    resize, normalization = metadata["resize"], metadata["normalization"]
    try:
        return Preprocess.from_dict(
            {
                "input_size": int(metadata["input_size"]),
                "mean": normalization["mean"],
                "std": normalization["std"],
                "resize_mode": resize["mode"],
                "crop_fraction": resize.get("crop_fraction", 1.0),
                "interpolation": resize["interpolation"],
            }
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path} has damaged visionfit metadata ({error})") from None


def foreign_preprocess(input_size: int) -> Preprocess:
    """For a file without metadata: shorter side to the input size, centre square (no squashing),
    bilinear; mean/std are the identity because only the graph can know its normalisation."""
    return Preprocess(input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "crop", 1.0, "bilinear")


def execution_providers(device: str, available: Sequence[str]) -> list[Any]:
    """onnxruntime's providers for a --device value: CUDA where asked (or auto and present), else CPU."""
    check_device_name(device)
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if device == "mps":
        raise UserError("--device mps: ONNX models run on onnxruntime's cpu or cuda; use --device cpu")
    if not has_cuda:
        raise UserError(
            f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
            "or use --device cpu"
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def open_session(path: Path, device: str = "cpu") -> Any:
    """An onnxruntime session of `path`, quiet (warnings only as errors)."""
    onnxruntime = import_onnxruntime(f"running {path}")
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    providers = execution_providers(device, onnxruntime.get_available_providers())
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a model onnxruntime can run ({first})") from None


class OnnxNetwork:
    """An onnxruntime session as the network of an `InferenceModel`: a float (N, 3, S, S) torch
    batch in [0, 1] → float32 logits (N, classes) as a torch tensor."""

    def __init__(self, session: Any, output_name: str) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = output_name
        batch = session.get_inputs()[0].shape[0]
        # A graph exported with a fixed batch of 1 (common for others' files) gets one image a call.
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: pixels})[0]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        if self.fixed_batch is None or self.fixed_batch == len(array):
            logits = self.run(array)
        elif self.fixed_batch == 1:
            logits = np.concatenate([self.run(array[index : index + 1]) for index in range(len(array))])
        else:
            raise UserError(f"this ONNX model takes batches of exactly {self.fixed_batch} images")
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (or floats on the 0–255 scale) → float in [0, 1]: an export's input."""
    return images.float() / 255


def _static(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _graph_input_size(session: Any, path: Path) -> int | None:
    """The square side the graph's NCHW float input fixes, or None when it leaves it open."""
    graph_input = session.get_inputs()[0]
    if len(session.get_inputs()) != 1 or graph_input.type != "tensor(float)" or len(graph_input.shape) != 4:
        raise UserError(
            f"{path} does not take one float NCHW image batch (its inputs: "
            + ", ".join(f"{item.name} {item.type} {item.shape}" for item in session.get_inputs())
            + ")"
        )
    channels, height, width = (_static(value) for value in graph_input.shape[1:])
    if channels not in (3, None):
        raise UserError(f"{path} takes {channels} channels in dimension 1; visionfit feeds RGB NCHW")
    return height if height is not None and height == width else None


def _output_width(session: Any, output_name: str, input_size: int) -> int:
    output = next(item for item in session.get_outputs() if item.name == output_name)
    width = _static(output.shape[-1]) if output.shape else None
    if width is None:  # not fixed in the graph: ask it
        zeros = np.zeros((1, 3, input_size, input_size), dtype=np.float32)
        width = int(session.run([output_name], {session.get_inputs()[0].name: zeros})[0].shape[-1])
    return width


def _foreign_model_setup(
    session: Any, path: Path, classes: Sequence[str] | None, input_size: int | None
) -> tuple[list[str], Preprocess, str]:
    if classes is None:
        raise UserError(
            f"{path} has no visionfit metadata (classes, input size, resize, normalisation): it is not "
            "a visionfit export; to run it as a classifier of float RGB in [0, 1], pass --classes "
            "A,B,... (and --input-size N)"
        )
    size = input_size or _graph_input_size(session, path)
    if size is None:
        raise UserError(f"{path} does not fix its input size; pass --input-size N")
    return list(classes), foreign_preprocess(size), session.get_outputs()[0].name


def load_onnx(path: str | Path, options: InferenceOptions) -> InferenceModel:
    """An ONNX file as an `InferenceModel` running on onnxruntime (CPU, or CUDA where the device and
    onnxruntime allow). A visionfit export brings its classes, preprocessing and test-time
    augmentation; `options.classes` and `options.input_size` name them for a file without metadata
    (or rename the classes of an export); `options.flip`/`shift` override the recorded test-time
    augmentation."""
    path = Path(path).expanduser()
    if options.precision not in ("auto", "fp32"):
        raise UserError(
            f"--precision {options.precision}: an ONNX model runs in the precision it was exported in "
            "(float32, or int8 when quantized); use auto or fp32"
        )
    session = open_session(path, options.device)
    metadata, names, preprocess, output_name = _describe(session, path, options)
    width = _output_width(session, output_name, preprocess.input_size)
    if width != len(names):
        raise UserError(
            f"{path}: {len(names)} class names for a graph with {width} outputs per image; "
            "the file was altered, or --classes names the wrong number of classes"
        )
    augmentation = metadata.get("test_time_augmentation", {})
    shift = int(augmentation.get("shift", 0)) if options.shift is None else options.shift
    check_test_time_shift(shift, preprocess.input_size)
    return InferenceModel(
        OnnxNetwork(session, output_name),
        names,
        preprocess,
        Runtime(device=torch.device("cpu"), precision="fp32", channels_last=False),
        flip=bool(augmentation.get("flip", False)) if options.flip is None else options.flip,
        shift=shift,
        source=path,
        metadata=_inference_metadata(metadata, names, preprocess),
        prepare=unit_range,
    )


def _describe(
    session: Any, path: Path, options: InferenceOptions
) -> tuple[dict[str, Any], list[str], Preprocess, str]:
    """The file's visionfit metadata ({} for a foreign file), class names, preprocessing and the
    output that holds the logits."""
    graph_size = _graph_input_size(session, path)
    metadata = read_metadata(session.get_modelmeta().custom_metadata_map, path)
    if metadata is None:
        names, preprocess, output_name = _foreign_model_setup(
            session, path, options.classes, options.input_size
        )
        metadata = {}
    else:
        classes = options.classes
        names = list(classes) if classes is not None else [str(name) for name in metadata["classes"]]
        preprocess, output_name = preprocess_of(metadata, path), OUTPUT_NAMES[0]
        if options.input_size is not None and options.input_size != preprocess.input_size:
            raise UserError(f"{path} is an export for {preprocess.input_size}-pixel input; drop --input-size")
    if graph_size is not None and graph_size != preprocess.input_size:
        raise UserError(
            f"{path}: the graph takes {graph_size}x{graph_size} pixels but the input size is "
            f"{preprocess.input_size}; the file was altered or --input-size is wrong"
        )
    return metadata, names, preprocess, output_name


def _inference_metadata(
    metadata: dict[str, Any], classes: list[str], preprocess: Preprocess
) -> dict[str, Any]:
    """The checkpoint-shaped metadata `InferenceModel` users read (eval's training data under
    "config", the test accuracy under "metrics"), with the file's own under "onnx"."""
    # An int8 file's own accuracy, measured when it was quantized; else the checkpoint's.
    measured = metadata.get("quantization", metadata.get("source_checkpoint", {}))
    accuracy = measured.get("test_accuracy")
    metrics = {"test_accuracy": accuracy} if accuracy is not None else {}
    return {
        "format": "visionfit-onnx" if metadata else "onnx",
        "classes": classes,
        "preprocess": preprocess.to_dict(),
        "config": dict(metadata.get("training_data", {})),
        "metrics": metrics,
        "onnx": metadata,
        **{key: metadata[key] for key in ("task", "thresholds") if key in metadata},
    }
