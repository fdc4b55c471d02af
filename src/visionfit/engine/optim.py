"""Optimizer and learning-rate schedule, built from the config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from visionfit.config import TrainConfig


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
