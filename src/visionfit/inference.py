"""The one way from a trained model to something that classifies images.

`load_for_inference(source)` reads a checkpoint (file or run folder), rebuilds the network, puts it
in eval mode on the chosen device, in the runtime's precision and memory layout, and returns it as
an `InferenceModel` together with everything needed to feed it and read it: the class names, the
preprocessing, the test-time augmentation training tested with, and the runtime. `predict`,
`eval`, `load_model`, export and serve all start here, so a model answers the same everywhere. An
exported `.onnx` file loads here too (`onnx_model`), as a network that runs on onnxruntime.

An `InferenceModel` classifies uint8 batches at its input size (`preprocess` resizes pictures to
that); everything after the resize — normalisation, layout, precision, test-time augmentation —
happens inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.choices import MAX_TEST_TIME_SHIFT
from visionfit.data.augment import Normalize
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint import Checkpoint, load_checkpoint
from visionfit.engine.loops import Classifier
from visionfit.errors import UserError
from visionfit.models.record import ModelRecord, build_from_record, remember_record, uses_model_code
from visionfit.runtime import Runtime, create_runtime


@dataclass
class InferenceModel:
    """A trained model ready to classify: `network` in eval mode on `runtime.device`.

    `network` takes the batch `prepare` makes of the pixels: by default the checkpoint's
    normalisation (`Normalize`); a network that normalises inside itself (an exported ONNX graph)
    comes with its own `prepare`.
    """

    network: Callable[[torch.Tensor], torch.Tensor]
    classes: list[str]
    preprocess: Preprocess
    runtime: Runtime
    flip: bool = False  # test-time augmentation, as the checkpoint's training tested unless overridden
    shift: int = 0
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    classifier: Classifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_test_time_shift(self.shift, self.preprocess.input_size)
        if self.prepare is None:
            self.prepare = Normalize(self.preprocess, self.runtime.device, self.runtime.channels_last)
        self.classifier = Classifier(
            self.network, self.prepare, self.runtime, flip=self.flip, shift=self.shift
        )

    @property
    def model(self) -> nn.Module:
        """The network as a torch module (a checkpoint's; an exported file's network is not one)."""
        if not isinstance(self.network, nn.Module):
            raise UserError(f"{self.source} is not a PyTorch model")
        return self.network

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits (N, classes) on the device for a batch of pictures at the input size:
        uint8 (N, 3, S, S), or float on the same 0–255 scale."""
        return self.classifier(images)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes) on the CPU."""
        return torch.softmax(self.logits(images), dim=1).cpu()

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy recorded with the weights (the epoch they come from), if any."""
        return self.metadata.get("metrics", {}).get("test_accuracy")


def check_test_time_shift(shift: int, input_size: int) -> None:
    if not 0 <= shift <= MAX_TEST_TIME_SHIFT or shift >= input_size:
        raise UserError(
            f"test-time shift must be between 0 and {min(MAX_TEST_TIME_SHIFT, input_size - 1)} pixels "
            f"for {input_size}-pixel input, got {shift}"
        )


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

        return load_onnx(
            source,
            device=device,
            precision=precision,
            flip=flip,
            shift=shift,
            classes=classes,
            input_size=input_size,
        )
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
