"""Weight averaging (--ema): an exponential moving average of a model's parameters and buffers,
the weights a run tests, keeps as `best` and saves when it is on.

Our own few lines rather than `torch.optim.swa_utils.AveragedModel`, for four reasons: integer
buffers (BatchNorm's `num_batches_tracked`) are copied, not averaged; the warm-up decay is computed
on the host from a plain counter, where AveragedModel compares its device-side counter on every
update (a GPU sync per step); the averaged copy's state dict has the model's own keys (no
`module.` prefix, no `n_averaged`), so a checkpoint of it is an ordinary checkpoint of the model;
and under several processes each update takes rank 0's buffers (`distributed.main_values`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from visionfit.distributed import main_values

# The raw training weights in a `last` checkpoint of a run with --ema (its model weights are the
# average): extra training-state tensors named TRAINING_WEIGHTS/<parameter name>.
TRAINING_WEIGHTS = "training_weights"


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [tensor.detach() for tensor in (*module.parameters(), *module.buffers())]


class WeightAverage:
    """An exponential moving average of `model`'s parameters and floating-point buffers (its
    integer buffers follow the model), updated by `update(model)` after every optimizer step.

    Update n (counting from 0) moves the average towards the model by 1 − d with
    d = min(decay, (1 + n) / (10 + n)): a warm-up (TensorFlow's ExponentialMovingAverage with
    num_updates) so that the random initial weights fade within the first tens of steps instead of
    weighing on the average for thousands. `module` is the averaged copy, always in eval mode.
    Every rank of a multi-process run holds the same average: parameters are the same on every
    rank after each step, and BatchNorm's running statistics, which differ by rank (each process
    normalises its own share of the batch), are taken from rank 0, as DistributedDataParallel
    itself does at the start of each forward pass.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        with torch.no_grad():  # every rank starts from rank 0's weights
            for target, value in zip(_tensors(self.module), main_values(_tensors(self.module)), strict=True):
                if value is not target:
                    target.copy_(value)

    def current_decay(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model` (the plain, unwrapped model being trained)."""
        weight = 1 - self.current_decay()
        parameters = [parameter.detach() for parameter in model.parameters()]
        buffers = main_values([buffer.detach() for buffer in model.buffers()])
        averaged = _tensors(self.module)
        current = [*parameters, *buffers]
        if len(averaged) != len(current):
            raise ValueError("the model's parameters and buffers changed since the average was made")
        floating = [index for index, tensor in enumerate(averaged) if tensor.is_floating_point()]
        if floating:  # foreach: one fused update per device and dtype instead of a kernel per tensor
            torch._foreach_lerp_(
                [averaged[index] for index in floating], [current[index] for index in floating], weight
            )
        for target, value in zip(averaged, current, strict=True):
            if not target.is_floating_point():
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, with the model's own keys."""
        return self.module.state_dict()

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Put back an average saved by `state_dict` after `updates` updates."""
        self.module.load_state_dict(weights)
        self.updates = updates


def training_tensors(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The raw training weights as a checkpoint's extra training-state tensors."""
    return {f"{TRAINING_WEIGHTS}/{name}": tensor for name, tensor in model_state.items()}


def training_weights(extra_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The raw training weights back from a checkpoint's extra tensors."""
    prefix = f"{TRAINING_WEIGHTS}/"
    return {name[len(prefix) :]: tensor for name, tensor in extra_tensors.items() if name.startswith(prefix)}
