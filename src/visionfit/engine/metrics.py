"""Classification metrics from sums, never from averages of averages.

Everything is derived from a confusion matrix plus summed loss and top-k hit counts, which add up
exactly across batches of any size (a short last batch included) and, later, across processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from visionfit.distributed import sum_across
from visionfit.engine.calibration import CalibrationSums, format_calibration


@dataclass
class MetricSums:
    """Running sums over an evaluation: add batches with `update`, read results with `report`."""

    num_classes: int
    confusion: torch.Tensor = field(init=False)  # rows: true class, columns: predicted class
    loss_sum: float = 0.0
    top5_correct: int = 0
    calibration: CalibrationSums = field(default_factory=CalibrationSums)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: float) -> None:
        """Add one batch: `loss_sum` is the summed (not mean) loss over its samples."""
        predictions = logits.argmax(dim=1)
        pairs = targets.to(torch.int64) * self.num_classes + predictions.to(torch.int64)
        self.confusion += torch.bincount(pairs.cpu(), minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        k = min(5, self.num_classes)
        top = logits.topk(k, dim=1).indices
        self.top5_correct += int((top == targets.unsqueeze(1)).any(dim=1).sum())
        self.loss_sum += float(loss_sum)
        self.calibration.update(logits, targets)

    def across_processes(self) -> MetricSums:
        """Every process's sums added up: the totals of the whole test set, when each process
        evaluated a disjoint share of it (every image counts once). These sums in one process."""
        total = MetricSums(self.num_classes)
        total.confusion = sum_across(self.confusion)
        scalars = sum_across(torch.tensor([self.loss_sum, float(self.top5_correct)], dtype=torch.float64))
        total.loss_sum = float(scalars[0])
        total.top5_correct = round(float(scalars[1]))
        total.calibration = self.calibration.across_processes()
        return total

    def report(self, classes: list[str]) -> dict[str, Any]:
        """`classification_report` of the sums, with the calibration metrics under "calibration"."""
        report = classification_report(
            self.confusion, classes, loss_sum=self.loss_sum, top5_correct=self.top5_correct
        )
        report["calibration"] = self.calibration.report()
        return report


@dataclass
class Predictions:
    """Every evaluated sample's index in its split, true class, predicted class and probability."""

    indices: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    @classmethod
    def from_batches(cls, batches: list[tuple[torch.Tensor, ...]]) -> Predictions:
        if not batches:
            empty = torch.zeros(0, dtype=torch.int64)
            return cls(empty, empty, empty, empty.float())
        return cls(*(torch.cat(column) for column in zip(*batches, strict=True)))

    @classmethod
    def joined(cls, parts: list[Predictions]) -> Predictions:
        """The predictions of several processes' shares as one, in sample order."""
        whole = cls.from_batches(
            [(part.indices, part.targets, part.predicted, part.confidence) for part in parts]
        )
        order = whole.indices.argsort(stable=True)
        return cls(
            whole.indices[order], whole.targets[order], whole.predicted[order], whole.confidence[order]
        )

    def most_confident_mistakes(self, count: int) -> list[tuple[int, int, int, float]]:
        """(sample index, true class, predicted class, probability) of the wrongly classified
        samples, most confident first."""
        wrong = (self.predicted != self.targets).nonzero().flatten()
        chosen = wrong[self.confidence[wrong].argsort(descending=True, stable=True)][:count]
        return [
            (
                int(self.indices[at]),
                int(self.targets[at]),
                int(self.predicted[at]),
                float(self.confidence[at]),
            )
            for at in chosen
        ]


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # A class never predicted has precision 0, never NaN (scikit-learn's zero_division=0).
    defined = denominator > 0
    return torch.where(defined, numerator / torch.where(defined, denominator, 1.0), 0.0)


def _averages(scores: dict[str, torch.Tensor], weights: torch.Tensor | None) -> dict[str, float]:
    """Each score's mean over the classes (`weights` None: the macro average) or weighted sum."""
    return {
        name: float(values.mean() if weights is None else (values * weights).sum())
        for name, values in scores.items()
    }


def classification_report(
    confusion: torch.Tensor,
    classes: list[str],
    *,
    loss_sum: float | None = None,
    top5_correct: int | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages.

    Returns plain Python numbers (JSON-ready). Macro averages run over every class, including
    classes absent from the data (they count as 0), as scikit-learn does with explicit labels.
    """
    confusion = confusion.to(torch.float64)
    total = float(confusion.sum())
    true_positive = confusion.diag()
    support = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    weights = support / total if total else torch.zeros_like(support)
    scores = {"precision": precision, "recall": recall, "f1": f1}
    per_class = {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(classes)
    }
    present = support > 0  # balanced accuracy averages the recall of the classes in the data (scikit-learn's)
    report: dict[str, Any] = {
        "count": int(total),
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if bool(present.any()) else 0.0,
        "macro": _averages(scores, None),
        "weighted": _averages(scores, weights),
        "per_class": per_class,
        "confusion_matrix": confusion.to(torch.int64).tolist(),
    }
    if loss_sum is not None:
        report["loss"] = loss_sum / total if total else 0.0
    if top5_correct is not None:
        report["top5_accuracy"] = top5_correct / total if total else 0.0
    return report


def format_report(report: dict[str, Any], classes: list[str]) -> str:
    """A scikit-learn-style text table of a `classification_report`."""
    width = max([len(name) for name in classes] + [len("weighted avg")])
    lines = [f"{'':>{width}}  precision  recall      f1  support"]
    for name in classes:
        values = report["per_class"][name]
        lines.append(
            f"{name:>{width}}  {values['precision']:9.3f}  {values['recall']:6.3f}  "
            f"{values['f1']:6.3f}  {values['support']:7d}"
        )
    lines.append("")
    for average in ("macro", "weighted"):
        values = report[average]
        lines.append(
            f"{average + ' avg':>{width}}  {values['precision']:9.3f}  "
            f"{values['recall']:6.3f}  {values['f1']:6.3f}  {report['count']:7d}"
        )
    summary = f"{'accuracy':>{width}}  {report['accuracy']:9.3f}"
    if "balanced_accuracy" in report:  # reports saved before it existed have none
        summary += f"  (balanced {report['balanced_accuracy']:.3f})"
    if "top5_accuracy" in report:
        summary += f"  (top-5 {report['top5_accuracy']:.3f})"
    if "loss" in report:
        summary += f"  loss {report['loss']:.4f}"
    lines.append(summary)
    if "calibration" in report:
        lines.append(f"{'calibration':>{width}}  {format_calibration(report['calibration'])}")
    return "\n".join(lines)


def best_metric_name(best_metric: str | None, task: str) -> str:
    """The number that chooses `best` (and drives --patience): --best-metric, or by default the
    accuracy (mAP for a multi-label run)."""
    if best_metric is not None:
        return best_metric
    return "map" if task == "multilabel" else "accuracy"


def metric_score(report: dict[str, Any], metric: str) -> float:
    """`metric`'s number in a held-out report, higher is better (the loss is negated)."""
    if metric == "loss":
        return -float(report["loss"])
    if metric == "macro_f1":
        return float(report["macro"]["f1"])
    return float(report[metric])  # accuracy, balanced_accuracy, map
