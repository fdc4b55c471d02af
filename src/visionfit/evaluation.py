"""`visionfit eval`: a checkpoint on a dataset split — loss, top-1/top-5, per-class metrics, the
confusion matrix, and the most confidently wrong images — as a table and as report files.

The metrics come from the same `MetricSums` that training reports every epoch, so the numbers of
`eval` on the test split equal the epoch's numbers for the same weights.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from visionfit.data import ArraySamples, DataSplits, Samples, load_data
from visionfit.data.images import open_rgb
from visionfit.data.loaders import build_eval_loader
from visionfit.data.transforms import EvalTransform, Preprocess, build_eval_transform
from visionfit.engine.checkpoint import load_checkpoint
from visionfit.engine.loops import classify
from visionfit.engine.metrics import MetricSums
from visionfit.errors import UserError
from visionfit.plots import MISTAKES_SHOWN, Mistake, confusion_matrix_figure, mistakes_figure, save_figures
from visionfit.runtime import Runtime, create_runtime
from visionfit.serialization import build_model

SPLITS = ("train", "val", "test")


@dataclass
class Predictions:
    """Every sample's predicted class and its probability, beside the summed metrics."""

    sums: MetricSums
    targets: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    def most_confident_mistakes(self, count: int = MISTAKES_SHOWN) -> list[int]:
        """Indices of the wrongly classified samples, most confident first."""
        wrong = (self.predicted != self.targets).nonzero().flatten()
        order = self.confidence[wrong].argsort(descending=True, stable=True)
        return wrong[order][:count].tolist()


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    num_classes: int,
    *,
    flip: bool = False,
    shift: int = 0,
) -> Predictions:
    """`engine.loops.evaluate` that also keeps each sample's prediction (for the mistakes grid)."""
    model.eval()
    sums = MetricSums(num_classes)
    targets, predicted, confidence = [], [], []
    for images, labels in batches:
        images, labels = runtime.to_device(images), runtime.to_device(labels)
        with runtime.autocast():
            logits = classify(model, images, flip=flip, shift=shift)
        logits = logits.float()
        sums.update(logits, labels, float(F.cross_entropy(logits, labels, reduction="sum")))
        probability, index = torch.softmax(logits, dim=1).max(dim=1)
        targets.append(labels.cpu())
        predicted.append(index.cpu())
        confidence.append(probability.cpu())
    empty = torch.zeros(0, dtype=torch.int64)
    return Predictions(
        sums,
        torch.cat(targets) if targets else empty,
        torch.cat(predicted) if predicted else empty,
        torch.cat(confidence) if confidence else empty.float(),
    )


def collect_mistakes(
    predictions: Predictions, samples: Samples, classes: list[str], preprocess: Preprocess
) -> list[Mistake]:
    """The most confidently wrong samples, as the model saw them (resized, not normalised)."""
    resize = EvalTransform(preprocess).resize
    mistakes = []
    for index in predictions.most_confident_mistakes():
        if isinstance(samples, ArraySamples):
            image, source = samples.images[index], f"#{index}"
        else:
            image, source = TF.to_image(open_rgb(samples.paths[index])), str(samples.paths[index])
        mistakes.append(
            Mistake(
                resize(image.as_subclass(torch.Tensor)),
                classes[int(predictions.targets[index])],
                classes[int(predictions.predicted[index])],
                float(predictions.confidence[index]),
                source,
            )
        )
    return mistakes


@dataclass
class EvalResult:
    """What `evaluate_checkpoint` measured."""

    checkpoint: Path
    split: str
    description: str
    classes: list[str]
    report: dict[str, Any]
    mistakes: list[Mistake]


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
    return data.test, "held-out split" if split == "val" else "test split"


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: str = "auto",
    workers: int = 0,
    precision: str = "auto",
) -> EvalResult:
    """Evaluate a checkpoint on a split of a dataset.

    Without `dataset`/`data_dir`, the ones the checkpoint was trained on; a folder dataset without
    train/ and val/ sub-folders is split with the checkpoint's own seed and fraction, so "test" is
    the very images training held out. "val" and "test" both name the held-out split.
    """
    loaded = load_checkpoint(checkpoint, device="cpu")
    config = loaded.metadata.get("config", {})
    if dataset is None and data_dir is None:
        dataset, data_dir = config.get("dataset"), config.get("data_dir")
    data = load_data(
        dataset,
        data_dir,
        val_fraction=config.get("val_fraction", 0.1),
        seed=config.get("seed", 0),
        notify=print,  # e.g. "reading it as --dataset folder", "using the bundled sample"
    )
    check_classes(data.classes, loaded.classes, data.description)
    samples, split_name = _select_split(data, split)
    preprocess = Preprocess.from_dict(loaded.metadata["preprocess"])
    runtime = create_runtime(device, precision)
    model = build_model(loaded).to(runtime.device)
    loader = build_eval_loader(
        samples,
        build_eval_transform(preprocess),
        batch_size=batch_size,
        workers=workers,
        device=runtime.device,
    )
    # as training tested it, so that eval repeats the epoch's numbers
    predictions = predict_batches(
        model, loader, runtime, len(loaded.classes), flip=loaded.test_time_flip, shift=loaded.test_time_shift
    )
    report = predictions.sums.report(loaded.classes)
    mistakes = collect_mistakes(predictions, samples, loaded.classes, preprocess)
    description = f"{split_name} of {data.description}"
    return EvalResult(loaded.path, split, description, loaded.classes, report, mistakes)


def write_confusion_csv(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion, strict=True):
            writer.writerow([name, *row])


def write_report(out_dir: Path, result: EvalResult) -> list[Path]:
    """metrics.json, confusion_matrix.csv, confusion_matrix.png and mistakes.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "checkpoint": str(result.checkpoint),
        "split": result.split,
        "data": result.description,
        "classes": result.classes,
        **result.report,
        "mistakes": [
            {
                "source": mistake.source,
                "true": mistake.true_class,
                "predicted": mistake.predicted_class,
                "probability": mistake.probability,
            }
            for mistake in result.mistakes
        ],
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_confusion_csv(out_dir / "confusion_matrix.csv", result.report["confusion_matrix"], result.classes)
    figures = {
        "confusion_matrix": confusion_matrix_figure(result.report["confusion_matrix"], result.classes),
        "mistakes": mistakes_figure(result.mistakes),
    }
    return [out_dir / "metrics.json", out_dir / "confusion_matrix.csv", *save_figures(figures, out_dir)]


def write_training_plots(
    run_dir: Path,
    history: list[dict[str, Any]],
    model: nn.Module,
    test_loader: Any,
    samples: Samples,
    classes: list[str],
    preprocess: Preprocess,
    runtime: Runtime,
    writer: Any = None,
    step: int = 0,
) -> list[Path]:
    """At the end of training: confusion_matrix.png, mistakes.png and curves.png in the run folder,
    and the same images in TensorBoard (`plots/*`), for the final weights."""
    from visionfit.plots import curves_figure

    predictions = predict_batches(model, test_loader, runtime, len(classes))
    figures = {
        "confusion_matrix": confusion_matrix_figure(predictions.sums.confusion, classes),
        "mistakes": mistakes_figure(collect_mistakes(predictions, samples, classes, preprocess)),
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
