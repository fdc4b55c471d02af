"""The training step loop and the one evaluation loop: plain functions, no file I/O.

`train_steps` is a generator: it yields after every optimizer step, so the caller decides what to
print, log or checkpoint between steps without hooks or callbacks reaching into the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visionfit.distributed import all_finite
from visionfit.engine.calibration import CalibrationSums
from visionfit.engine.metrics import MetricSums, Predictions
from visionfit.engine.multilabel import MultiLabelSums, image_losses_sum
from visionfit.engine.optim import Optimization
from visionfit.runtime import Runtime

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepOutput:
    """One optimizer step: the batch's mean loss (detached, still on the device) and its size.

    The loss stays a tensor so that a GPU never waits for the host unless the caller asks for it.
    """

    loss: torch.Tensor
    batch_size: int
    skipped: bool = False


class NonFiniteLossError(ArithmeticError):
    """The loss or the gradient norm of a batch was NaN or infinite; no weights were changed."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def train_steps(
    model: nn.Module,
    batches: Iterable[Batch],
    optimization: Optimization,
    runtime: Runtime,
    *,
    clip_grad_norm: float | None = None,
    on_nonfinite: str = "stop",
) -> Iterator[StepOutput]:
    """Train on `batches`, one optimizer and scheduler step per batch.

    A batch whose loss (or, when clipping, gradient norm) is not finite either raises
    `NonFiniteLossError` before any weight changes (`on_nonfinite="stop"`) or is skipped without
    an optimizer step (`"skip"`, yielded with `skipped=True`). The scheduler advances either way,
    so the learning-rate schedule stays tied to the batch count. Under fp16 the grad scaler's own
    overflow handling comes first: its skipped steps are normal while it finds its scale.
    """
    optimizer, scheduler, scaler = optimization.optimizer, optimization.scheduler, optimization.scaler
    model.train()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for images, targets in batches:
        images, targets = runtime.to_device(images), runtime.to_device(targets)
        with runtime.autocast():
            logits = model(images)
            loss = optimization.loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        problem = _backward(loss, optimization, parameters, clip_grad_norm)
        if problem is not None:
            if on_nonfinite != "skip":
                raise NonFiniteLossError(problem)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            yield StepOutput(loss=loss.detach(), batch_size=int(targets.shape[0]), skipped=True)
            continue
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        yield StepOutput(loss=loss.detach(), batch_size=int(targets.shape[0]))


def _backward(
    loss: torch.Tensor,
    optimization: Optimization,
    parameters: list[nn.Parameter],
    clip_grad_norm: float | None,
) -> str | None:
    """The backward pass (and clipping) of a finite loss; what is not finite otherwise, the same
    answer on every rank (or one would skip the gradient exchange the others wait in)."""
    if not all_finite(loss):
        local = loss.item()
        return f"the loss is {local}" if not math.isfinite(local) else "another process's loss is not finite"
    scaler = optimization.scaler
    scaler.scale(loss).backward()
    if clip_grad_norm is not None:
        scaler.unscale_(optimization.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        if not scaler.is_enabled() and not torch.isfinite(norm):
            return f"the gradient norm is {norm.item()}"
    return None


# Test-time views of a small batch go through the model as one batch: each model call costs a
# fixed few milliseconds of Python and kernel set-up, which at batch 1 is most of the work (airnet
# with flip + shift on the CPU: six calls 12.4 ms, one call of six images 4.0 ms) and which, in
# `serve`, holds the interpreter lock its request handling needs. Large batches (training's tests)
# keep one call per view, so their memory does not grow with the number of views.
JOINED_VIEWS_LIMIT = 256


def classify(model: nn.Module, images: torch.Tensor, *, flip: bool = False, shift: int = 0) -> torch.Tensor:
    """The model's logits for `images`, with test-time augmentation: with `flip`, the mean of the
    logits of each image and its mirror image (as likely a picture as the original); with `shift`,
    half of that plus a quarter each for the image moved `shift` pixels up-left and down-right (the
    edges reflected), the small translations training's random crops taught the network."""
    channels_last = images.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    views = [images]
    if shift:
        height, width = images.shape[-2:]
        padded = F.pad(images, [shift] * 4, mode="reflect")
        moved = [padded[..., :height, :width], padded[..., 2 * shift :, 2 * shift :]]
        views += [view.contiguous(memory_format=layout) for view in moved]
    if flip:
        views = [image for view in views for image in (view, view.flip(-1))]
    if len(views) > 1 and len(images) * len(views) <= JOINED_VIEWS_LIMIT:
        logits = list(model(torch.cat(views).contiguous(memory_format=layout)).split(len(images)))
    else:
        logits = [model(view) for view in views]
    if flip:
        logits = [(logits[index] + logits[index + 1]) / 2 for index in range(0, len(logits), 2)]
    if shift:
        return (logits[0] + (logits[1] + logits[2]) / 2) / 2
    return logits[0]


class Classifier:
    """uint8 image batches → float32 logits: the input preparation (normalisation, layout), the
    network in eval mode under the runtime's autocast, and test-time augmentation (`classify`).
    Training's tests and every use of a trained model classify through one of these."""

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        prepare: Callable[[torch.Tensor], torch.Tensor],
        runtime: Runtime,
        *,
        flip: bool = False,
        shift: int = 0,
    ) -> None:
        self.network = network
        self.prepare = prepare
        self.runtime = runtime
        self.flip = flip
        self.shift = shift

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.network, nn.Module):
            self.network.eval()
        images = self.prepare(images.to(self.runtime.device, non_blocking=self.runtime.device.type == "cuda"))
        with self.runtime.autocast():
            logits = classify(self.network, images, flip=self.flip, shift=self.shift)
        return logits.float()


@dataclass
class Evaluation:
    """What one pass over a test set measured: the summed metrics and, when kept, every sample's
    prediction (this process's share of the samples); with a temperature, the calibration of the
    undivided logits (`uncalibrated`); with `keep_logits`, the measured logits and true classes."""

    sums: MetricSums | MultiLabelSums
    predictions: Predictions | None = None
    uncalibrated: CalibrationSums | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@torch.inference_mode()
def evaluate(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    keep: str | None = None,
    temperature: float = 1.0,
    sums: MetricSums | MultiLabelSums | None = None,
) -> Evaluation:
    """Classify every `(images, labels, sample indices)` batch and sum loss, hits, the confusion
    matrix and the calibration sums. `keep`: also keep, per sample, its predicted class and
    probability ("predictions") or its (divided) logits and label ("logits"). `temperature`
    divides the classifier's logits before anything is measured (a calibrated model); the
    undivided logits' calibration is then kept as well, so a report can show it before and after.
    Several labels per image: pass `MultiLabelSums` (labels (N, C) 0/1; no kept predictions)."""
    if keep not in (None, "predictions", "logits"):
        raise ValueError(f"keep must be None, 'predictions' or 'logits', got {keep!r}")
    keep_predictions, keep_logits = keep == "predictions", keep == "logits"
    sums = sums if sums is not None else MetricSums(num_classes)
    multilabel = isinstance(sums, MultiLabelSums)
    uncalibrated = CalibrationSums() if temperature != 1.0 and not multilabel else None
    kept, kept_logits, kept_targets = [], [torch.zeros(0, num_classes)], [torch.zeros(0, dtype=torch.int64)]
    for images, labels, indices in batches:
        logits = classifier(images)
        labels = labels.to(logits.device)
        if multilabel:
            sums.update(logits, labels, image_losses_sum(logits, labels))
            continue
        if uncalibrated is not None:
            uncalibrated.update(logits, labels)
            logits = logits / temperature
        sums.update(logits, labels, float(F.cross_entropy(logits, labels, reduction="sum")))
        if keep_predictions:
            probability, predicted = torch.softmax(logits, dim=1).max(dim=1)
            kept.append((indices.cpu(), labels.cpu(), predicted.cpu(), probability.cpu()))
        if keep_logits:
            kept_logits.append(logits.cpu())
            kept_targets.append(labels.cpu().to(torch.int64))
    predictions = Predictions.from_batches(kept) if keep_predictions and not multilabel else None
    evaluation = Evaluation(sums, predictions, uncalibrated)
    if keep_logits:
        evaluation.logits, evaluation.targets = torch.cat(kept_logits), torch.cat(kept_targets)
    return evaluation
