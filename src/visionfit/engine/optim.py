"""What changes the weights: the loss, the optimizer, the learning-rate schedule and the grad
scaler, built from the config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionfit.engine.multilabel import MultiLabelLoss
from visionfit.models.freezing import parameter_groups

if TYPE_CHECKING:
    from visionfit.config import TrainConfig
    from visionfit.runtime import Runtime


@dataclass
class Optimization:
    """The loss and the objects a training step updates (saved in every `last` checkpoint)."""

    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @property
    def lr(self) -> float:
        """The head's learning rate now (the first parameter group's), the one that is logged."""
        return float(self.optimizer.param_groups[0]["lr"])


def create_optimization(
    model: nn.Module,
    config: TrainConfig,
    runtime: Runtime,
    num_classes: int,
    steps_per_epoch: int,
    class_weights: torch.Tensor | None = None,
) -> Optimization:
    """Label-smoothed cross-entropy (each class's loss weighed by `class_weights`, --class-weights),
    the optimizer (a head and a slower backbone as two groups when transfer learning asks for it),
    its per-step schedule and the precision's grad scaler."""
    groups = None
    if config.freeze != "none" or config.backbone_lr_scale != 1.0:
        groups = parameter_groups(model, num_classes, config.lr, config.backbone_lr_scale)
    optimizer = create_optimizer(model, config, groups)
    if config.task == "multilabel":
        loss_fn: nn.Module = MultiLabelLoss(config.label_smoothing)
    else:
        weight = class_weights.to(runtime.device) if class_weights is not None else None
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    return Optimization(
        loss_fn,
        optimizer,
        create_scheduler(optimizer, config, steps_per_epoch),
        runtime.grad_scaler(),
    )


def create_optimizer(
    model: nn.Module, config: TrainConfig, groups: list[dict[str, Any]] | None = None
) -> torch.optim.Optimizer:
    """The optimizer over `groups` (parameter groups with their own lr, e.g. a head and a slower
    backbone) or, without them, over every trainable parameter at `config.lr`."""
    parameters: Any = groups or [parameter for parameter in model.parameters() if parameter.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based): linear warm-up, then
    constant ("none") or a cosine decay that reaches 0 after the last step ("cosine")."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def create_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: stepping every batch (not every epoch) lets a run stop and resume
    between any two steps with the same learning rates."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, config.scheduler)
    )
