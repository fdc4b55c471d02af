"""`InferenceOptions`: how to run a trained model, one object that predict, eval, serve, export and
`visionfit.load` all pass to `load_for_inference` (torch-free, so the CLI builds it cheaply)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from visionfit.choices import MODEL_CODE_POLICIES
from visionfit.errors import UserError


@dataclass(frozen=True)
class InferenceOptions:
    """How a checkpoint or an exported file runs.

    `device`, `precision` and `channels_last` (the memory layout) are chosen as training chooses
    them ("auto"; `precision="fp32"` gives exact float32 outputs). `flip` and `shift` (test-time
    augmentation) default to what the checkpoint's training tested with. `batch_size`: images per
    forward pass. `model_code`: what loading may do with a checkpoint of your own `file.py:Class`,
    which it must run to rebuild the class: "refuse" it, run only the "recorded" file (the one
    training used, by SHA-256; the default), or "trust" whatever file is there. `classes` and
    `input_size` name what an ONNX classifier without visionfit metadata cannot say.
    """

    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    flip: bool | None = None
    shift: int | None = None
    batch_size: int = 256
    model_code: str = "recorded"
    classes: Sequence[str] | None = None
    input_size: int | None = None
    # Temperature scaling: a calibrated checkpoint's logits are divided by its temperature; False
    # gives the network's own (what `visionfit calibrate` fits on). An export divides in its graph.
    calibrated: bool = True

    def __post_init__(self) -> None:
        if self.model_code not in MODEL_CODE_POLICIES:
            raise UserError(
                f"model_code must be one of {', '.join(MODEL_CODE_POLICIES)}, got {self.model_code!r}"
            )
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")

    def with_settings(self, settings: Mapping[str, Any]) -> InferenceOptions:
        """These options with some fields replaced (keyword arguments of the Python API)."""
        known = {item.name for item in fields(self)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"unknown inference option {unknown[0]!r}; the options: {', '.join(sorted(known))}"
            )
        return replace(self, **settings)


def inference_options(options: InferenceOptions | None, settings: Mapping[str, Any]) -> InferenceOptions:
    """`options` (default: the defaults) with the keyword `settings` a caller gave on top."""
    return (options or InferenceOptions()).with_settings(settings)
