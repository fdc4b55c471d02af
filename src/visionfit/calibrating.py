"""`visionfit calibrate`: fit a checkpoint's temperature on data the user names and store it in the
checkpoint's metadata, where predict, eval, serve, the page and export read it.

Temperature scaling (`engine.calibration.fit_temperature`) needs held-out data the model did not
train on, and must never see the test set it will be reported on: the split is always named by
the caller (`val` when the data have a validation split; `train` and `test` are allowed when
asked for by name, with a warning of what they cost). The network's undivided logits are measured
once; the checkpoint is rewritten atomically with `metadata["calibration"]` (temperature, the
data it was fitted on, the NLL and ECE there before and after). Weights are untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.data.samples import Samples
from visionfit.engine.calibration import calibration_report, fit_temperature
from visionfit.engine.checkpoint_file import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from visionfit.engine.loops import evaluate
from visionfit.errors import UserError
from visionfit.inference import InferenceModel, load_for_inference
from visionfit.inference.options import InferenceOptions

CALIBRATION_SPLITS = ("val", "train", "test")
SPLIT_WARNINGS = {
    "train": "the model has fitted its training data, so a temperature fitted there is too low "
    "(still over-confident); prefer a validation split",
    "test": "the test split is no longer a fair measure of this model's calibration; report on other data",
}

# Said by train and refused by calibrate: one temperature scales one softmax over the classes.
MULTILABEL_NO_TEMPERATURE = (
    "no temperature (a temperature scales one softmax; each class's sigmoid has its own decision "
    "threshold, chosen on validation data and kept in the checkpoint)"
)


@dataclass
class CalibrationResult:
    """What `calibrate_checkpoint` fitted and where it wrote it."""

    checkpoint: Path
    temperature: float
    data: str  # the samples it was fitted on, in words
    count: int
    before: dict[str, Any]  # calibration report of the undivided logits
    after: dict[str, Any]  # of the logits divided by the temperature
    warning: str | None = None

    def record(self) -> dict[str, Any]:
        """What the checkpoint's metadata keeps under "calibration"."""
        return {
            "temperature": self.temperature,
            "method": "temperature scaling (one temperature for all classes, L-BFGS on NLL)",
            "fitted_on": self.data,
            "count": self.count,
            "nll_before": self.before["nll"],
            "nll_after": self.after["nll"],
            "ece_before": self.before["ece"],
            "ece_after": self.after["ece"],
            "fitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def named_split(data: Any, split: str) -> Samples:
    """The samples of `split` of loaded `DataSplits`; "val" only when the data have a validation
    split (never the test split under another name)."""
    if split not in CALIBRATION_SPLITS:
        raise UserError(f"--split must be one of {', '.join(CALIBRATION_SPLITS)}, got {split!r}")
    if split == "val":
        validation = getattr(data, "val", None)
        if validation is None and getattr(data, "validation", False):  # a label file's val rows
            validation = data.test
        if validation is None:
            raise UserError(
                f"{data.description} has no validation split; hold one out of train (train with "
                "--val-fraction), or name held-out data with --data-dir DIR and its split"
            )
        return validation
    return data.train if split == "train" else data.test


def fit_on_samples(
    model: InferenceModel, samples: Samples, *, batch_size: int = 256, workers: int = 0
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """The temperature fitted on `samples` with the model's undivided logits (load it with
    `calibrated=False`), and the calibration reports before and after it."""
    if not len(samples):
        raise UserError("no samples to calibrate on: the split is empty")
    batches = model.batches(samples, batch_size=batch_size, workers=workers)
    evaluation = evaluate(model.classifier, batches, len(model.classes), keep="logits")
    assert evaluation.logits is not None and evaluation.targets is not None
    temperature = fit_temperature(evaluation.logits, evaluation.targets)
    after = calibration_report(evaluation.logits / temperature, evaluation.targets)
    return temperature, evaluation.sums.calibration.report(), after


def store_temperature(
    checkpoint: str | Path, calibration: dict[str, Any], out: str | Path | None = None
) -> Path:
    """Rewrite the checkpoint (or write `out`) with `calibration` in its metadata, atomically."""
    loaded = load_checkpoint(checkpoint)
    metadata = {**loaded.metadata, "calibration": calibration}
    path = Path(out).expanduser() if out is not None else loaded.path
    save_checkpoint(path, loaded.model_state, metadata, loaded.extra_tensors)
    return path


def calibrate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str,
    dataset: str | None = None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    options: InferenceOptions | None = None,
) -> CalibrationResult:
    """Fit the temperature of `checkpoint` (a file or run folder: its best checkpoint) on `split`
    of `dataset`/`data_dir` (default: the data it was trained on) and store it in the checkpoint
    (or in a copy at `out`). `options`: device, batch size and model-code policy; it always runs
    in float32 and uncalibrated, so the logits it fits are the network's exact ones."""
    path = resolve_checkpoint_path(checkpoint)
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is an ONNX file; calibrate its checkpoint, then export it again")
    options = options or InferenceOptions()
    model = load_for_inference(path, options, precision="fp32", calibrated=False)
    if model.multilabel:
        raise UserError(f"{path} is a multi-label model: {MULTILABEL_NO_TEMPERATURE}")
    data = model.training_data(dataset, data_dir)
    if data.classes != model.classes:
        raise UserError(
            f"the classes of {data.description} differ from the checkpoint's ({', '.join(model.classes)})"
        )
    samples = named_split(data, split)
    temperature, before, after = fit_on_samples(model, samples, batch_size=options.batch_size)
    description = f"{split} split of {data.description}"
    result = CalibrationResult(
        path, temperature, description, len(samples), before, after, SPLIT_WARNINGS.get(split)
    )
    result.checkpoint = store_temperature(path, result.record(), out)
    return result


def calibrate_run_checkpoints(
    checkpoints: list[Path], samples: Samples, data: str, *, device: str = "auto"
) -> CalibrationResult | None:
    """The end of a run with a validation split: fit the temperature of each of the run's
    checkpoints (best and last) on the validation `samples` and store it in each. Returns the last
    one's result (None when there was nothing to calibrate)."""
    result = None
    for path in checkpoints:
        if not path.is_file():
            continue
        model = load_for_inference(path, device=device, precision="fp32", calibrated=False)
        temperature, before, after = fit_on_samples(model, samples)
        result = CalibrationResult(path, temperature, data, len(samples), before, after)
        store_temperature(path, result.record())
    return result
