"""Unbalanced classes: the loss weights of `--class-weights` (`--sampler balanced`'s draw is
`data.order.balanced_weights` and `epoch_order`, seeded per epoch)."""

from __future__ import annotations

import torch

from visionfit.errors import UserError

EFFECTIVE_NUMBER_BETA = 0.999  # Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images of each class among `labels` (one class index per image)."""
    return torch.bincount(labels.flatten().to(torch.int64), minlength=num_classes).to(torch.float64)


def loss_class_weights(spec: str | None, labels: torch.Tensor, classes: list[str]) -> torch.Tensor | None:
    """The cross-entropy weight of each class as `--class-weights` says (None: all 1). `auto`:
    inverse frequency, N / (K x N_class); `effective`: (1 - beta) / (1 - beta^N_class) scaled to
    average 1; else the user's list. A class with no training images gets weight 0 (it has no loss)."""
    if spec is None:
        return None
    counts = class_counts(labels, len(classes))
    present = counts > 0
    if spec == "auto":
        weights = torch.where(present, counts.sum() / (len(classes) * counts.clamp(min=1)), 0.0)
    elif spec == "effective":
        raw = (1 - EFFECTIVE_NUMBER_BETA) / (1 - EFFECTIVE_NUMBER_BETA ** counts.clamp(min=1))
        raw = torch.where(present, raw, 0.0)
        weights = raw * int(present.sum()) / raw.sum()
    else:
        weights = torch.tensor([float(item) for item in spec.split(",")], dtype=torch.float64)
        if len(weights) != len(classes):
            raise UserError(
                f"--class-weights gives {len(weights)} weights for {len(classes)} classes "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); give one per class"
            )
    return weights.to(torch.float32)


def describe_class_weights(spec: str, weights: torch.Tensor, classes: list[str]) -> str:
    """One line: the weights, class by class (the first 10)."""
    how = {"auto": "inverse frequency", "effective": f"effective number, beta {EFFECTIVE_NUMBER_BETA}"}
    shown = ", ".join(
        f"{name} {weight:.3g}" for name, weight in zip(classes[:10], weights.tolist(), strict=False)
    )
    more = f", ... ({len(classes)} classes)" if len(classes) > 10 else ""
    return f"class weights ({how.get(spec, 'as given')}): {shown}{more}"
