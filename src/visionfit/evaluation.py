"""`visionfit eval`: a checkpoint on a dataset split — loss, top-1/top-5, per-class metrics, the
confusion matrix, and the most confidently wrong images — as a table and as report files.

The metrics come from the same `MetricSums` that training reports every epoch, so the numbers of
`eval` on the test split equal the epoch's numbers for the same weights.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visionfit.choices import SPLITS
from visionfit.data.registry import DataSplits
from visionfit.data.samples import Samples
from visionfit.data.transforms import Preprocess, as_uint8_tensor, resize_picture
from visionfit.engine.loops import evaluate
from visionfit.engine.metrics import Predictions
from visionfit.engine.multilabel import MultiLabelSums
from visionfit.errors import UserError
from visionfit.inference import InferenceModel, InferenceOptions, load_for_inference
from visionfit.plots import (
    MISTAKES_SHOWN,
    Mistake,
    confusion_matrix_figure,
    label_counts_figure,
    mistakes_cam_figure,
    mistakes_figure,
    reliability_figure,
    save_figures,
)

logger = logging.getLogger(__name__)
# The worst mistakes mistakes_cam.png explains: two maps each, rows of a figure that stays readable.
MISTAKES_EXPLAINED = 8


def collect_mistakes(
    predictions: Predictions, samples: Samples, classes: list[str], preprocess: Preprocess
) -> list[Mistake]:
    """The most confidently wrong samples, as the model saw them (resized, not normalised)."""
    return [
        Mistake(
            resize_picture(as_uint8_tensor(samples.picture(index)), preprocess),
            classes[true_class],
            classes[predicted_class],
            probability,
            samples.name(index),
        )
        for index, true_class, predicted_class, probability in predictions.most_confident_mistakes(
            MISTAKES_SHOWN
        )
    ]


@dataclass
class EvalResult:
    """What `evaluate_checkpoint` measured."""

    checkpoint: Path
    split: str
    description: str
    classes: list[str]
    report: dict[str, Any]
    mistakes: list[Mistake]
    temperature: float = 1.0  # the checkpoint's (1: not calibrated, or an export's, applied inside)
    uncalibrated: dict[str, Any] | None = None  # the calibration before the temperature, if it has one
    mistake_overlays: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # Grad-CAM, when it can


def check_classes(data_classes: list[str], checkpoint_classes: list[str], where: str) -> None:
    """The data must have the checkpoint's classes, same names in the same order."""
    if data_classes == checkpoint_classes:
        return
    missing = [name for name in checkpoint_classes if name not in data_classes]
    extra = [name for name in data_classes if name not in checkpoint_classes]
    if missing or extra:
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"extra {', '.join(extra)}" if extra else "",
        ]
        detail = "; ".join(part for part in parts if part)
    else:
        detail = f"same names in another order ({', '.join(data_classes)})"
    raise UserError(
        f"the classes of {where} differ from the checkpoint's ({', '.join(checkpoint_classes)}): {detail}"
    )


def _select_split(data: DataSplits, split: str) -> tuple[Samples, str]:
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "train":
        return data.train, "train split"
    if split == "val" and data.val is not None:
        return data.val, "validation split"
    return data.test, "held-out split" if split == "val" else "test split"


def evaluate_checkpoint(
    checkpoint: str | Path,
    options: InferenceOptions | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    workers: int = 0,
) -> EvalResult:
    """Evaluate a checkpoint on a split of a dataset, run as `options` say (`InferenceOptions`: the
    device, precision, batch size, ...), with the test-time augmentation its training tested with
    unless they say otherwise, so that eval repeats the epoch's numbers.

    Without `dataset`/`data_dir`, the ones the checkpoint was trained on; a folder dataset without
    train/ and val/ sub-folders is split with the checkpoint's own seed and fraction, so "test" is
    the very images training held out. "val" is the validation split when the run had one, else,
    like "test", the held-out split. An exported `.onnx` file is evaluated on onnxruntime, on its
    checkpoint's data by default. Messages (which data were read) go through `logging`.
    """
    model = load_for_inference(checkpoint, options)
    data = model.training_data(dataset, data_dir)
    check_classes(data.classes, model.classes, data.description)
    samples, split_name = _select_split(data, split)
    batch_size = (options or InferenceOptions()).batch_size
    batches = model.batches(samples, batch_size=batch_size, workers=workers)
    source, description = model.source or Path(checkpoint), f"{split_name} of {data.description}"
    if model.multilabel:  # each class decided at the checkpoint's threshold; no single-class mistakes
        sums = MultiLabelSums(len(model.classes), thresholds=model.thresholds)
        report = evaluate(model.classifier, batches, len(model.classes), sums=sums).sums.report(model.classes)
        return EvalResult(source, split, description, model.classes, report, [])
    evaluation = evaluate(
        model.classifier, batches, len(model.classes), keep="predictions", temperature=model.temperature
    )
    assert evaluation.predictions is not None
    mistakes = collect_mistakes(evaluation.predictions, samples, model.classes, model.preprocess)
    report = evaluation.sums.report(model.classes)
    result = EvalResult(source, split, description, model.classes, report, mistakes, model.temperature)
    result.uncalibrated = evaluation.uncalibrated.report() if evaluation.uncalibrated is not None else None
    result.mistake_overlays = explain_mistakes(model, mistakes)
    return result


def explain_mistakes(
    model: InferenceModel, mistakes: list[Mistake]
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Grad-CAM overlays of the worst mistakes (where the model looked for the class it chose and
    for the true class), or None when the model cannot be explained (an ONNX export, a transformer,
    no grad-cam package installed), which the log says once."""
    from visionfit.explaining import Explainer

    try:
        explainer = Explainer(model)
    except UserError as error:  # quiet: eval's printed report is the same for a checkpoint and its export
        logger.debug(f"no mistakes_cam.png: {error}")
        return None
    shown = mistakes[:MISTAKES_EXPLAINED]
    return explainer.mistake_overlays(
        [mistake.image for mistake in shown],
        [mistake.predicted_class for mistake in shown],
        [mistake.true_class for mistake in shown],
    )


def write_confusion_csv(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion, strict=True):
            writer.writerow([name, *row])


PER_CLASS_COLUMNS = ("ap", "precision", "recall", "f1", "support", "predicted", "hits", "threshold")


def write_per_class_csv(path: Path, report: dict[str, Any], classes: list[str]) -> None:
    """Multi-label: one row per class with its AP, precision, recall, F1, counts and threshold."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["class", *PER_CLASS_COLUMNS])
        for name in classes:
            values = report["per_class"][name]
            writer.writerow(
                [name, *("" if values[key] is None else values[key] for key in PER_CLASS_COLUMNS)]
            )


def mistake_records(mistakes: list[Mistake]) -> list[dict[str, Any]]:
    """The mistakes as JSON objects: which image, its true and predicted class, the probability."""
    return [
        {
            "source": mistake.source,
            "true": mistake.true_class,
            "predicted": mistake.predicted_class,
            "probability": mistake.probability,
        }
        for mistake in mistakes
    ]


def write_report(out_dir: Path, result: EvalResult) -> list[Path]:
    """metrics.json, confusion_matrix.csv, confusion_matrix.png, mistakes.png and reliability.png
    (the calibration; before and after the temperature when the model has one) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "checkpoint": str(result.checkpoint),
        "split": result.split,
        "data": result.description,
        "classes": result.classes,
        **result.report,
        "temperature": result.temperature,
        "calibration_before_temperature": result.uncalibrated,
        "mistakes": mistake_records(result.mistakes),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if result.report.get("task") == "multilabel":
        write_per_class_csv(out_dir / "per_class.csv", result.report, result.classes)
        figures = {"label_counts": label_counts_figure(result.report, result.classes)}
        return [out_dir / "metrics.json", out_dir / "per_class.csv", *save_figures(figures, out_dir)]
    write_confusion_csv(out_dir / "confusion_matrix.csv", result.report["confusion_matrix"], result.classes)
    figures = {
        "confusion_matrix": confusion_matrix_figure(result.report["confusion_matrix"], result.classes),
        "mistakes": mistakes_figure(result.mistakes),
        "reliability": reliability_figure(result.report["calibration"], result.uncalibrated),
    }
    if result.mistake_overlays is not None:
        figures["mistakes_cam"] = mistakes_cam_figure(result.mistakes, result.mistake_overlays)
    return [out_dir / "metrics.json", out_dir / "confusion_matrix.csv", *save_figures(figures, out_dir)]


def write_training_plots(
    run_dir: Path,
    history: list[dict[str, Any]],
    mistakes: list[Mistake],
    classes: list[str],
    writer: Any = None,
    step: int = 0,
) -> list[Path]:
    """At the end of training: confusion_matrix.png, mistakes.png (and mistakes.json, the list it
    shows), curves.png and reliability.png in the run folder, and the images in TensorBoard
    (`plots/*`), for the final weights: the confusion matrix and the reliability diagram of the last
    epoch's test (as its metrics say), its most confident `mistakes` (`collect_mistakes` of every
    test sample's predictions, all processes' shares joined)."""
    from visionfit.plots import curves_figure

    listing = json.dumps(mistake_records(mistakes), indent=2) + "\n"
    (run_dir / "mistakes.json").write_text(listing, encoding="utf-8")
    figures = {
        "confusion_matrix": confusion_matrix_figure(history[-1]["test"]["confusion_matrix"], classes),
        "mistakes": mistakes_figure(mistakes),
        "curves": curves_figure(history),
        "reliability": reliability_figure(history[-1]["test"]["calibration"]),
    }
    return [run_dir / "mistakes.json", *save_figures(figures, run_dir, writer, step)]


def write_mistakes_cam(
    run_dir: Path, mistakes: list[Mistake], checkpoint: Path, writer: Any = None, step: int = 0
) -> list[Path]:
    """At the end of training, with grad-cam installed: mistakes_cam.png (where the final weights,
    `checkpoint`, looked for the class they chose and for the true class) in the run folder and in
    TensorBoard; nothing for a model that cannot be explained."""
    overlays = explain_checkpoint_mistakes(checkpoint, mistakes)
    if overlays is None:
        return []
    return save_figures({"mistakes_cam": mistakes_cam_figure(mistakes, overlays)}, run_dir, writer, step)


def explain_checkpoint_mistakes(
    checkpoint: Path, mistakes: list[Mistake]
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """`explain_mistakes` with the model of `checkpoint` (the run's final weights), on the CPU: a
    few pictures, not worth a device's set-up. None when it cannot be loaded or explained."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None
    try:
        model = load_for_inference(checkpoint, device="cpu", precision="fp32")
        return explain_mistakes(model, mistakes)
    except UserError as error:  # a model trained as an instance cannot be rebuilt from its file
        logger.debug(f"no mistakes_cam.png: {error}")
    except Exception as error:  # a figure must never fail a finished run; grad-cam meets odd models
        logger.warning(
            f"warning: mistakes_cam.png skipped: Grad-CAM failed ({type(error).__name__}: {error})"
        )
    return None


def write_label_count_plots(
    run_dir: Path, history: list[dict[str, Any]], classes: list[str], writer: Any = None, step: int = 0
) -> list[Path]:
    """A multi-label run's end: label_counts.png (per class: true, predicted, right) and curves.png."""
    from visionfit.plots import curves_figure

    figures = {
        "label_counts": label_counts_figure(history[-1]["test"], classes),
        "curves": curves_figure(history),
    }
    return save_figures(figures, run_dir, writer, step)


def format_confusion(confusion: list[list[int]], classes: list[str]) -> str:
    """The confusion matrix as text: rows true classes, columns predicted (numbered as the rows)."""
    corner = "true \\ predicted"
    width = max(len(corner), *(len(f"{index} {name}") + 1 for index, name in enumerate(classes)))
    cell = max(4, *(len(str(value)) + 1 for row in confusion for value in row))
    header = f"{corner:<{width}}" + "".join(f"{index:>{cell}}" for index in range(len(classes)))
    lines = [header]
    for index, (name, row) in enumerate(zip(classes, confusion, strict=True)):
        lines.append(f"{f'{index} {name}':<{width}}" + "".join(f"{value:>{cell}}" for value in row))
    return "\n".join(lines)
