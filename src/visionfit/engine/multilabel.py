"""Several labels per image: the loss (binary cross-entropy on one sigmoid per class), the metrics
(mAP, micro and macro F1, per-class AP/precision/recall/F1, exact match, Hamming loss) and the
per-class decision thresholds chosen on validation data.

Average precision needs every score, not sums, so `MultiLabelSums` keeps the probabilities of the
evaluated images (N x C floats: 4 bytes per class per image). It answers like `MetricSums`
(`update`, `across_processes`, `report`), so the one evaluation loop serves both tasks. The
numbers follow scikit-learn's definitions (`average_precision_score`, `f1_score` with
zero_division=0, `hamming_loss`); tests check them against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.config import TrainConfig

DEFAULT_THRESHOLD = 0.5


def check_multilabel_run(config: TrainConfig) -> None:
    """One line for what a multi-label run cannot do (before any run folder exists)."""
    from visionfit.distributed import process_layout

    if config.mixup or config.cutmix:
        raise UserError(
            "--mixup and --cutmix mix one label per image; a multi-label run (several labels per image) "
            "cannot use them: drop them"
        )
    if process_layout()[1] > 1:
        raise UserError(
            "a multi-label run (several labels per image) runs in one process; run it without torchrun"
        )


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy with logits, averaged over classes and images; with label smoothing
    `epsilon`, each 0/1 target moves `epsilon / 2` towards the other side."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets)


def image_losses_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The summed (over images) per-image loss: each image's BCE averaged over its classes."""
    losses = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return float(losses.mean(dim=1).sum())


@dataclass
class MultiLabelSums:
    """The probabilities and 0/1 targets of every evaluated image, and the summed loss."""

    num_classes: int
    thresholds: list[float] | None = None  # the decisions the report's P/R/F1 use (default 0.5)
    tune_thresholds: bool = False  # validation data: the report also chooses each class's threshold
    probabilities: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    loss_sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(part) for part in self.targets)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: float) -> None:
        self.probabilities.append(torch.sigmoid(logits.float()).cpu())
        self.targets.append(targets.cpu().to(torch.float32))
        self.loss_sum += float(loss_sum)

    def across_processes(self) -> MultiLabelSums:
        from visionfit.distributed import process_layout

        if process_layout()[1] > 1:  # refused before training starts (training checks the task)
            raise UserError("multi-label runs on one process; run without torchrun")
        return self

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, targets), both (N, C) float32."""
        if not self.targets:
            empty = torch.zeros((0, self.num_classes))
            return empty, empty
        return torch.cat(self.probabilities), torch.cat(self.targets)

    def report(self, classes: list[str]) -> dict[str, Any]:
        """The metrics; on validation data (`tune_thresholds`) each class's threshold is chosen
        first (its best F1) and precision, recall and F1 are measured at it, as the checkpoint
        will decide; elsewhere at `thresholds` (default 0.5)."""
        probabilities, targets = self.matrices()
        thresholds = choose_thresholds(probabilities, targets) if self.tune_thresholds else self.thresholds
        report = multilabel_report(probabilities, targets, classes, thresholds, loss_sum=self.loss_sum)
        report["thresholds"] = [values["threshold"] for values in report["per_class"].values()]
        report["thresholds_chosen"] = self.tune_thresholds
        return report


def ranked_counts(
    scores: torch.Tensor, truth: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one class: the distinct scores from high to low, and the true and false positives when
    every image scoring at least each of them is called positive (scikit-learn's curve points)."""
    order = scores.argsort(descending=True, stable=True)
    scores, truth = scores[order].double(), truth[order].double()
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]
    true_positives = truth.cumsum(0)[last_of_tie]
    false_positives = (1 - truth).cumsum(0)[last_of_tie]
    return scores[last_of_tie], true_positives, false_positives


def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Area under the precision-recall steps, sum of (R_k - R_{k-1}) P_k, as scikit-learn's
    `average_precision_score`; None for a class with no positive image."""
    positives = float(truth.sum())
    if positives == 0 or len(scores) == 0:
        return None
    _, true_positives, false_positives = ranked_counts(scores, truth)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positives
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((steps * precision).sum())


def best_f1_threshold(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """The threshold that maximises the class's F1 on these images (positive when the score is at
    least it): halfway between the last score called positive and the next lower one."""
    positives = float(truth.sum())
    if positives == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD
    distinct, true_positives, false_positives = ranked_counts(scores, truth)
    f1 = 2 * true_positives / (true_positives + false_positives + positives)
    best = int(f1.argmax())
    if best + 1 < len(distinct):
        return float((distinct[best] + distinct[best + 1]) / 2)
    return float(distinct[best])


def choose_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """One threshold per class, each maximising that class's F1 on (validation) data."""
    return [
        best_f1_threshold(probabilities[:, index], targets[:, index]) for index in range(targets.shape[1])
    ]


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    defined = denominator > 0
    return torch.where(defined, numerator / torch.where(defined, denominator, 1.0), 0.0)


def _scores(
    true_positive: torch.Tensor, false_positive: torch.Tensor, support: torch.Tensor
) -> list[torch.Tensor]:
    """Precision, recall and F1 from counts (0 where undefined, as scikit-learn's zero_division=0)."""
    precision = _safe_divide(true_positive, true_positive + false_positive)
    recall = _safe_divide(true_positive, support)
    return [precision, recall, _safe_divide(2 * precision * recall, precision + recall)]


def multilabel_report(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    thresholds: list[float] | None = None,
    *,
    loss_sum: float | None = None,
) -> dict[str, Any]:
    """mAP (the mean of the per-class APs of classes with a positive image), micro and macro
    precision/recall/F1 at `thresholds` (default 0.5), per-class AP/precision/recall/F1/support,
    exact-match accuracy and Hamming loss; plain numbers, JSON-ready. "accuracy" is exact match."""
    count = int(targets.shape[0])
    thresholds = list(thresholds or [DEFAULT_THRESHOLD] * len(classes))
    predicted = (probabilities >= torch.tensor(thresholds, dtype=probabilities.dtype)).double()
    truth = targets.double()
    true_positive, false_positive = (predicted * truth).sum(0), (predicted * (1 - truth)).sum(0)
    support = truth.sum(0)
    per_class = _scores(true_positive, false_positive, support)
    micro = _scores(true_positive.sum(), false_positive.sum(), support.sum())
    precisions = [
        average_precision(probabilities[:, index], targets[:, index]) for index in range(len(classes))
    ]
    defined = [value for value in precisions if value is not None]
    names = ("precision", "recall", "f1")
    report: dict[str, Any] = {
        "task": "multilabel",
        "count": count,
        "map": sum(defined) / len(defined) if defined else 0.0,
        "exact_match": float((predicted == truth).all(dim=1).double().mean()) if count else 0.0,
        "hamming_loss": float((predicted != truth).double().mean()) if count else 0.0,
        "micro": {name: float(value) for name, value in zip(names, micro, strict=True)},
        "macro": {name: float(value.mean()) for name, value in zip(names, per_class, strict=True)},
        "per_class": {},
    }
    for index, name in enumerate(classes):
        report["per_class"][name] = {
            "ap": precisions[index],
            **{key: float(value[index]) for key, value in zip(names, per_class, strict=True)},
            "support": int(support[index]),
            "predicted": int(true_positive[index] + false_positive[index]),
            "hits": int(true_positive[index]),
            "threshold": float(thresholds[index]),
        }
    report["accuracy"] = report["exact_match"]
    if loss_sum is not None:
        report["loss"] = loss_sum / count if count else 0.0
    return report


def multilabel_thresholds_line(report: dict[str, Any]) -> str:
    """What the checkpoint's decision thresholds are and where they come from."""
    values = ", ".join(f"{value:.2f}" for value in report["thresholds"])
    if report.get("thresholds_chosen"):
        return f"per-class thresholds chosen on validation data (best F1 each), in the checkpoint: {values}"
    return (
        "no validation split (the held-out rows are test rows): every class's threshold is 0.5; "
        "add val rows to the label file to choose them"
    )


def format_multilabel_report(report: dict[str, Any], classes: list[str]) -> str:
    """A text table: per class AP, precision, recall, F1, support and threshold, then the averages."""
    width = max([len(name) for name in classes] + [len("micro avg")])
    lines = [f"{'':>{width}}     AP  precision  recall      f1  support  threshold"]
    for name in classes:
        values = report["per_class"][name]
        ap = f"{values['ap']:.3f}" if values["ap"] is not None else "    -"
        lines.append(
            f"{name:>{width}}  {ap}  {values['precision']:9.3f}  {values['recall']:6.3f}  "
            f"{values['f1']:6.3f}  {values['support']:7d}  {values['threshold']:9.3f}"
        )
    lines.append("")
    for average in ("micro", "macro"):
        values = report[average]
        lines.append(
            f"{average + ' avg':>{width}}         {values['precision']:9.3f}  {values['recall']:6.3f}  "
            f"{values['f1']:6.3f}  {report['count']:7d}"
        )
    lines.append(
        f"{'mAP':>{width}}  {report['map']:.3f}  exact match {report['exact_match']:.3f}  "
        f"Hamming loss {report['hamming_loss']:.4f}"
        + (f"  loss {report['loss']:.4f}" if "loss" in report else "")
    )
    return "\n".join(lines)
