"""Figures of a model's results: the confusion matrix, its most confident mistakes, and the
training curves. Written as PNG files and logged to TensorBoard as images.

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot, so no
window, no global backend switch and no figure left open; matplotlib is imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISTAKES_SHOWN = 16


@dataclass
class Mistake:
    """One wrongly classified image (uint8, (3, H, W)) with its true and predicted class names."""

    image: torch.Tensor
    true_class: str
    predicted_class: str
    probability: float
    source: str


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def confusion_matrix_figure(confusion: torch.Tensor | list[list[int]], classes: list[str]) -> Figure:
    """Counts (left) and row-normalised recall (right); rows are true classes, columns predicted."""
    counts = np.asarray(torch.as_tensor(confusion), dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(4.0, 0.45 * len(classes) + 2.5)
    figure = _figure(2 * side, side)
    show_numbers = len(classes) <= 30  # beyond that the digits would overlap
    for axes, values, title, text in (
        (figure.add_subplot(1, 2, 1), counts, "counts", lambda v: f"{int(v)}"),
        (figure.add_subplot(1, 2, 2), normalised, "row-normalised (recall)", lambda v: f"{v:.2f}"),
    ):
        image = axes.imshow(values, cmap="Blues", vmin=0)
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_title(f"confusion matrix: {title}")
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
        if show_numbers:
            threshold = values.max() / 2 if values.size else 0
            for row in range(len(classes)):
                for column in range(len(classes)):
                    value = values[row, column]
                    axes.text(
                        column,
                        row,
                        text(value),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > threshold else "black",
                    )
    return figure


def mistakes_figure(mistakes: list[Mistake]) -> Figure:
    """A grid of wrongly classified images titled `true → predicted (probability)`."""
    columns = min(4, max(1, len(mistakes)))
    rows = max(1, -(-len(mistakes) // columns))
    figure = _figure(2.6 * columns, 2.8 * rows)
    if not mistakes:
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return figure
    for position, mistake in enumerate(mistakes, start=1):
        axes = figure.add_subplot(rows, columns, position)
        axes.imshow(mistake.image.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes.set_title(
            f"true {mistake.true_class}\npredicted {mistake.predicted_class} ({mistake.probability:.0%})",
            fontsize=8,
        )
        axes.axis("off")
    return figure


def curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Train and test loss, and test accuracy, per epoch of a run's history (metrics.jsonl)."""
    epochs = [record["epoch"] for record in history]
    figure = _figure(10, 4)
    loss_axes, accuracy_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    loss_axes.plot(epochs, [record["train_loss"] for record in history], marker="o", label="train")
    split = "val" if any("val" in record for record in history) else "test"  # the split of each epoch
    tested = [record for record in history if record.get(split) is not None]  # --test-every skips some
    tested_epochs = [record["epoch"] for record in tested]
    loss_axes.plot(tested_epochs, [record[split]["loss"] for record in tested], marker="o", label=split)
    loss_axes.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    loss_axes.legend()
    accuracy_axes.plot(
        tested_epochs, [record[split]["accuracy"] for record in tested], marker="o", label="top-1"
    )
    if all("top5_accuracy" in record[split] for record in tested):
        top5 = [record[split]["top5_accuracy"] for record in tested]
        accuracy_axes.plot(tested_epochs, top5, marker="o", label="top-5")
    accuracy_axes.set(title=f"{split} accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    accuracy_axes.legend()
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        if len(epochs) <= 20:
            axes.set_xticks(epochs)
    return figure


def label_counts_figure(report: dict[str, Any], classes: list[str]) -> Figure:
    """Multi-label (in place of a confusion matrix): per class, the images that have the label,
    those the model gives it, and those it gives it rightly."""
    per_class = [report["per_class"][name] for name in classes]
    positions = np.arange(len(classes))
    figure = _figure(max(6.0, 0.6 * len(classes) + 2), 4)
    axes = figure.add_subplot(1, 1, 1)
    for offset, key, label in (
        (-0.27, "support", "true"),
        (0, "predicted", "predicted"),
        (0.27, "hits", "right"),
    ):
        axes.bar(positions + offset, [values[key] for values in per_class], width=0.27, label=label)
    axes.set_xticks(positions, classes, rotation=45, ha="right")
    axes.set(title="images per class (at the decision thresholds)", ylabel="images")
    axes.legend()
    return figure


def figure_pixels(figure: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_figures(figures: dict[str, Figure], folder: Path, writer: Any = None, step: int = 0) -> list[Path]:
    """Write each figure as `folder/NAME.png` and, given a TensorBoard writer, log it as image
    `plots/NAME`. Each figure is drawn once, for both. Returns the paths written."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        pixels = figure_pixels(figure)
        path = folder / f"{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        if writer is not None:
            writer.add_image(f"plots/{name}", pixels, step, dataformats="HWC")
    if writer is not None:
        writer.flush()
    return paths


def _outline_before(axes: Any, before: dict[str, Any], centres: np.ndarray, width: float) -> None:
    """The uncalibrated model's reliability bars, drawn as outlines behind the calibrated ones."""
    filled = np.asarray(before["bins"]["count"]) > 0
    accuracy = np.asarray(before["bins"]["accuracy"])[filled]
    label = f"before (ECE {before['ece']:.1%})"
    axes.bar(centres[filled], accuracy, width=width, fill=False, edgecolor="tab:red", label=label)


def reliability_figure(calibration: dict[str, Any], before: dict[str, Any] | None = None) -> Figure:
    """The reliability diagram of a calibration report (`engine.calibration`): per confidence bin,
    the accuracy against the mean confidence (a calibrated model lies on the diagonal), with the
    gap shaded and the share of samples per bin below; `before` (the undivided logits of a model
    with a temperature) drawn as an outline for comparison."""
    figure = _figure(5.5, 6.5)
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1))
    axes, counts_axes = figure.add_subplot(grid[0]), figure.add_subplot(grid[1])
    bins = calibration["bins"]
    width = 1 / len(bins["count"])
    centres = np.arange(len(bins["count"])) * width + width / 2
    filled = np.asarray(bins["count"]) > 0
    accuracy, confidence = np.asarray(bins["accuracy"]), np.asarray(bins["confidence"])
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    if before is not None:
        _outline_before(axes, before, centres, width)
    label = "after" if before is not None else "accuracy"
    axes.bar(
        centres[filled],
        accuracy[filled],
        width=width,
        color="tab:blue",
        alpha=0.7,
        edgecolor="white",
        label=f"{label} (ECE {calibration['ece']:.1%})",
    )
    axes.bar(
        centres[filled],
        (confidence - accuracy)[filled],
        bottom=accuracy[filled],
        width=width,
        color="tab:orange",
        alpha=0.35,
        label="gap to the mean confidence",
    )
    axes.set(title="reliability diagram", xlabel="confidence (top-class probability)", ylabel="accuracy")
    axes.set(xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left", fontsize=8)
    total = max(1, int(np.sum(bins["count"])))
    counts_axes.bar(centres, np.asarray(bins["count"]) / total, width=width, color="tab:blue", alpha=0.7)
    counts_axes.set(xlim=(0, 1), xlabel="confidence", ylabel="share of samples")
    for item in (axes, counts_axes):
        item.grid(alpha=0.3)
    return figure


def mistakes_cam_figure(mistakes: list[Mistake], overlays: list[tuple[torch.Tensor, torch.Tensor]]) -> Figure:
    """The worst mistakes, one row each: the picture, where the model looked for the class it chose,
    and where it looked for the true class (Grad-CAM overlays, uint8 (H, W, 3))."""
    rows = max(1, len(overlays))
    figure = _figure(7.5, 2.5 * rows)
    if not overlays:
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return figure
    for row, (mistake, (chosen, true)) in enumerate(zip(mistakes, overlays, strict=False)):
        panels = (
            (mistake.image.permute(1, 2, 0).numpy(), f"{mistake.source[-28:]}"),
            (chosen.numpy(), f"looked for {mistake.predicted_class} ({mistake.probability:.0%})"),
            (true.numpy(), f"looked for {mistake.true_class} (true)"),
        )
        for column, (pixels, title) in enumerate(panels, start=1):
            axes = figure.add_subplot(rows, 3, row * 3 + column)
            axes.imshow(pixels, interpolation="nearest" if column == 1 else "bilinear")
            axes.set_title(title, fontsize=8)
            axes.axis("off")
    return figure
