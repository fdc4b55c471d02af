"""The one way from a trained model to something that classifies images.

`load_for_inference(source, options)` reads a checkpoint (file or run folder), rebuilds the
network, puts it in eval mode on the chosen device, in the runtime's precision and memory layout,
and returns it as an `InferenceModel` together with everything needed to feed it and read it: the
class names, the preprocessing, the test-time augmentation training tested with, and the runtime.
`predict`, `eval`, `load_model`, export and serve all start here, so a model answers the same
everywhere. An exported `.onnx` file loads here too (`onnx_runtime`), as a network that runs on
onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from visionfit.engine.checkpoint_file import Checkpoint, load_checkpoint
from visionfit.errors import UserError
from visionfit.inference.model import InferenceModel
from visionfit.inference.options import InferenceOptions, inference_options
from visionfit.models.record import ModelRecord, build_from_record, remember_record
from visionfit.runtime import create_runtime


def build_model(
    checkpoint: Checkpoint, model: nn.Module | None = None, *, model_code: str = "recorded"
) -> nn.Module:
    """Rebuild the checkpoint's architecture (or take `model`, built by the caller) and load its
    weights strictly: every tensor must fit. A user's model class runs only as the `model_code`
    policy allows (`models.custom.check_model_code`)."""
    record = ModelRecord.from_dict(checkpoint.metadata["model"])
    if model is None:
        model = build_from_record(record, model_code=model_code)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{checkpoint.path}: weights do not fit model {record.name} ({first})") from None
    return remember_record(model, record)


def load_for_inference(
    source: str | Path,
    options: InferenceOptions | None = None,
    *,
    model: nn.Module | None = None,
    **settings: Any,
) -> InferenceModel:
    """Load a visionfit checkpoint (a `.safetensors` file or a run folder) or an exported `.onnx`
    file for inference, run as `options` say (`InferenceOptions`; keyword `settings` such as
    `device="cpu"` or `precision="fp32"` replace single fields).

    A checkpoint of your own `file.py:Class` runs that file to rebuild the class, as
    `options.model_code` allows. `model`: an instance to load the weights into (for models trained
    as instances). A `.onnx` file runs on onnxruntime (`inference.onnx_runtime`; it runs no Python
    code, and `precision` can only be auto or fp32): a visionfit export brings its classes and
    preprocessing; `options.classes` and `options.input_size` name them for an ONNX classifier
    without visionfit metadata.
    """
    options = inference_options(options, settings)
    if Path(source).suffix.lower() == ".onnx":
        if model is not None:
            raise UserError(f"{source} is an ONNX file; model= is for checkpoints of instances")
        if not options.calibrated:
            raise UserError(f"{source} is an ONNX file; calibrate its checkpoint, then export it again")
        from visionfit.inference.onnx_runtime import load_onnx  # onnxruntime is an optional extra

        return load_onnx(source, options)
    if options.classes is not None or options.input_size is not None:
        raise UserError(
            f"{source}: --classes and --input-size are for ONNX files; a checkpoint knows its own"
        )
    checkpoint = load_checkpoint(source, device="cpu")
    network = build_model(checkpoint, model, model_code=options.model_code)
    runtime = create_runtime(options.device, options.precision, options.channels_last)
    return InferenceModel(
        runtime.prepare_model(network).eval(),
        checkpoint.classes,
        checkpoint.preprocess,
        runtime,
        flip=checkpoint.test_time_flip if options.flip is None else options.flip,
        shift=checkpoint.test_time_shift if options.shift is None else options.shift,
        source=checkpoint.path,
        metadata=checkpoint.metadata,
        temperature=checkpoint.temperature if options.calibrated else 1.0,
    )
