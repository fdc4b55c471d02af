"""The one way from a trained model to something that classifies images.

`load_for_inference(source)` reads a checkpoint (file or run folder), rebuilds the network, puts it
in eval mode on the chosen device, in the runtime's precision and memory layout, and returns it as
an `InferenceModel` together with everything needed to feed it and read it: the class names, the
preprocessing, the test-time augmentation training tested with, and the runtime. `predict`,
`eval`, `load_model`, export and serve all start here, so a model answers the same everywhere. An
exported `.onnx` file loads here too (`onnx_model`), as a network that runs on onnxruntime.

"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint import Checkpoint, load_checkpoint
from visionfit.errors import UserError
from visionfit.inference_model import InferenceModel
from visionfit.models.record import ModelRecord, build_from_record, remember_record, uses_model_code
from visionfit.runtime import create_runtime


def build_model(
    checkpoint: Checkpoint,
    model: nn.Module | None = None,
    *,
    trust_model_code: bool = False,
    allow_model_code: bool = True,
) -> nn.Module:
    """Rebuild the checkpoint's architecture (or take `model`, built by the caller) and load its
    weights strictly: every tensor must fit. A user's model class runs only as
    `models.custom.check_model_code` allows (`trust_model_code` for a changed file); with
    `allow_model_code=False` (a service) not at all unless `trust_model_code`."""
    record = ModelRecord.from_dict(checkpoint.metadata["model"])
    if model is None and uses_model_code(record) and not (allow_model_code or trust_model_code):
        raise UserError(
            f"{checkpoint.path} names model code ({record.name}) that loading it would run; pass "
            "--trust-model-code to run it, or serve an ONNX export of it (`visionfit export`), which "
            "runs no Python code"
        )
    if model is None:
        model = build_from_record(record, trust_model_code=trust_model_code)
    try:
        model.load_state_dict(checkpoint.model_state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{checkpoint.path}: weights do not fit model {record.name} ({first})") from None
    return remember_record(model, record)


def load_for_inference(
    source: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    channels_last: str = "auto",
    flip: bool | None = None,
    shift: int | None = None,
    trust_model_code: bool = False,
    allow_model_code: bool = True,
    model: nn.Module | None = None,
    classes: Sequence[str] | None = None,
    input_size: int | None = None,
) -> InferenceModel:
    """Load a visionfit checkpoint (a `.safetensors` file or a run folder) or an exported `.onnx`
    file for inference.

    `device`, `precision` and `channels_last` are chosen as training chooses them (`"auto"`: bf16
    autocast on CPUs with AVX512-BF16 or AMX and on GPUs that have it; `precision="fp32"` gives
    exact float32 outputs). `flip` and `shift` (test-time augmentation) default to what the
    checkpoint's training tested with. A checkpoint of your own `file.py:Class` runs that file to
    rebuild the class: it is refused when the file is not the one training used, unless
    `trust_model_code=True`; `allow_model_code=False` refuses any checkpoint that names code unless
    `trust_model_code` (what a service does). `model`: an instance to load the weights into (for
    models trained as instances).

    A `.onnx` file runs on onnxruntime (`visionfit.onnx_model`; it runs no Python code, and
    `precision` can only be auto or fp32): a visionfit export brings its classes and preprocessing;
    `classes` and `input_size` name them for an ONNX classifier without visionfit metadata.
    """
    if Path(source).suffix.lower() == ".onnx":
        if model is not None:
            raise UserError(f"{source} is an ONNX file; model= is for checkpoints of instances")
        from visionfit.onnx_model import load_onnx  # onnxruntime is an optional extra

        options = {"flip": flip, "shift": shift, "classes": classes, "input_size": input_size}
        return load_onnx(source, device=device, precision=precision, **options)
    if classes is not None or input_size is not None:
        raise UserError(
            f"{source}: --classes and --input-size are for ONNX files; a checkpoint knows its own"
        )
    checkpoint = load_checkpoint(source, device="cpu")
    network = build_model(
        checkpoint, model, trust_model_code=trust_model_code, allow_model_code=allow_model_code
    )
    runtime = create_runtime(device, precision, channels_last)
    return InferenceModel(
        runtime.prepare_model(network).eval(),
        checkpoint.classes,
        Preprocess.from_dict(checkpoint.metadata["preprocess"]),
        runtime,
        flip=checkpoint.test_time_flip if flip is None else flip,
        shift=checkpoint.test_time_shift if shift is None else shift,
        source=checkpoint.path,
        metadata=checkpoint.metadata,
    )
