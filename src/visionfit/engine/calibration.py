"""Calibration: do the model's probabilities mean what they say, and the one-number fix for when
they do not (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural Networks").

`CalibrationSums` measures from sums that add up over batches and processes, like `MetricSums`:
per confidence bin (15 equal-width bins of the top class's probability) the sample count, the
summed confidence and the summed hits, plus the summed negative log-likelihood and Brier score.
From them: expected calibration error (ECE, the bins' |accuracy − confidence| weighted by their
share of samples), maximum calibration error (MCE, the worst non-empty bin), NLL and Brier.

`fit_temperature` finds the one temperature T that minimises the NLL of `softmax(logits / T)` on
held-out logits. Dividing every logit by the same positive number never changes their order, so
the predicted class (and accuracy) cannot move; only how sure the model says it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from visionfit.distributed import sum_across

BINS = 15
# Temperatures outside this range mean the logits carry no usable scale (all equal, or one sample).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


@dataclass
class CalibrationSums:
    """Running sums for the calibration metrics of top-label probabilities; add with `update`."""

    bins: int = BINS
    count: torch.Tensor = field(init=False)  # samples per confidence bin
    confidence: torch.Tensor = field(init=False)  # summed top probability per bin
    correct: torch.Tensor = field(init=False)  # summed hits per bin
    nll_sum: float = 0.0
    brier_sum: float = 0.0

    def __post_init__(self) -> None:
        self.count = torch.zeros(self.bins, dtype=torch.float64)
        self.confidence = torch.zeros(self.bins, dtype=torch.float64)
        self.correct = torch.zeros(self.bins, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch of float logits (N, classes) and true classes (N,)."""
        logits, targets = logits.detach().double().cpu(), targets.detach().to(torch.int64).cpu()
        probabilities = torch.softmax(logits, dim=1)
        confidence, predicted = probabilities.max(dim=1)
        # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur.
        index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1
        self.count += torch.bincount(index, minlength=self.bins).double()
        self.confidence.index_add_(0, index, confidence)
        self.correct.index_add_(0, index, (predicted == targets).double())
        self.nll_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        one_hot = F.one_hot(targets, probabilities.shape[1]).double()
        self.brier_sum += float(((probabilities - one_hot) ** 2).sum())

    def across_processes(self) -> CalibrationSums:
        """Every process's sums added up (each process measured a disjoint share of the samples)."""
        total = CalibrationSums(self.bins)
        packed = torch.cat(
            [
                self.count,
                self.confidence,
                self.correct,
                torch.tensor([self.nll_sum, self.brier_sum], dtype=torch.float64),
            ]
        )
        summed = sum_across(packed)
        total.count, total.confidence, total.correct = summed[: 3 * self.bins].view(3, self.bins).clone()
        total.nll_sum, total.brier_sum = float(summed[-2]), float(summed[-1])
        return total

    def report(self) -> dict[str, Any]:
        """ECE, MCE, NLL, Brier (JSON-ready numbers) and the reliability diagram's bins."""
        total = float(self.count.sum())
        filled = self.count > 0
        accuracy = torch.where(filled, self.correct / self.count.clamp(min=1), 0.0)
        confidence = torch.where(filled, self.confidence / self.count.clamp(min=1), 0.0)
        gaps = (accuracy - confidence).abs()
        return {
            "ece": float((gaps * self.count).sum() / total) if total else 0.0,
            "mce": float(gaps[filled].max()) if bool(filled.any()) else 0.0,
            "nll": self.nll_sum / total if total else 0.0,
            "brier": self.brier_sum / total if total else 0.0,
            "bins": {
                "count": [int(value) for value in self.count.tolist()],
                "accuracy": accuracy.tolist(),
                "confidence": confidence.tolist(),
            },
        }


def calibration_report(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """The calibration metrics of one set of logits (N, classes) against true classes (N,)."""
    sums = CalibrationSums()
    sums.update(logits, targets)
    return sums.report()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, max_iterations: int = 100) -> float:
    """The temperature T > 0 that minimises the mean NLL of `softmax(logits / T)` against `targets`.

    L-BFGS on log T (so T stays positive without a constraint), in float64 on the CPU, starting
    at T = 1; the answer is clamped to [0.05, 20]. Fit it on validation data, never on the test set.
    """
    if len(logits) == 0:
        raise ValueError("fit_temperature needs at least one sample")
    # Clones: logits measured under torch.inference_mode cannot take part in autograd.
    logits, targets = logits.detach().double().cpu().clone(), targets.detach().to(torch.int64).cpu().clone()
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_temperature], lr=1.0, max_iter=max_iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_temperature.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def format_calibration(report: dict[str, Any]) -> str:
    """One line: ECE, MCE, NLL and Brier of a `CalibrationSums.report`."""
    return (
        f"ECE {report['ece']:.2%}  MCE {report['mce']:.2%}  NLL {report['nll']:.4f}  "
        f"Brier {report['brier']:.4f}"
    )
