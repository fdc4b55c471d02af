"""Transfer learning's freezing: train only the head, then (optionally) the whole network.

The head is the final classification layer with `num_classes` outputs (see `heads.py`); the
backbone is everything else. Freezing is a pure function of the epoch (`backbone_frozen`), so a
resumed run puts it back in the right state for the epoch it resumes in.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from visionfit.models.heads import find_classifier

_HOOKS = "_visionfit_frozen_norm_hooks"


def split_parameters(model: nn.Module, num_classes: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head parameters, backbone parameters)."""
    head_name = find_classifier(model, num_classes)
    head = {id(parameter) for parameter in model.get_submodule(head_name).parameters()}
    parameters = list(model.parameters())
    return (
        [parameter for parameter in parameters if id(parameter) in head],
        [parameter for parameter in parameters if id(parameter) not in head],
    )


def parameter_groups(
    model: nn.Module, num_classes: int, lr: float, backbone_lr_scale: float
) -> list[dict[str, Any]]:
    """Optimizer groups: the head at `lr` first (the lr that is logged), then the backbone at
    `lr * backbone_lr_scale`. Frozen parameters are in the optimizer from the start, so that
    unfreezing later needs no new optimizer: while they have no gradient, SGD and AdamW skip them."""
    head, backbone = split_parameters(model, num_classes)
    groups: list[dict[str, Any]] = [{"params": head, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    return groups


def backbone_frozen(freeze: str, unfreeze_at: int | None, epoch: int) -> bool:
    """Whether the backbone is frozen during (1-based) `epoch`."""
    return freeze == "backbone" and (unfreeze_at is None or epoch < unfreeze_at)


def _keep_eval(module: nn.Module, inputs: Any) -> None:
    module.train(False)


def set_backbone_frozen(model: nn.Module, num_classes: int, frozen: bool) -> None:
    """Freeze or unfreeze everything but the head.

    Frozen normalisation layers also stay in eval mode, using and keeping their (pretrained)
    running statistics: the training loop calls `model.train()` each epoch, so a forward pre-hook
    switches them back before each use.
    """
    _, backbone = split_parameters(model, num_classes)
    for parameter in backbone:
        parameter.requires_grad_(not frozen)
        if frozen:
            parameter.grad = None
    for handle in getattr(model, _HOOKS, []):
        handle.remove()
    handles = []
    if frozen:
        head_name = find_classifier(model, num_classes)
        for name, module in model.named_modules():
            is_head = name == head_name or name.startswith(head_name + ".")
            if isinstance(module, nn.modules.batchnorm._NormBase) and not is_head:
                handles.append(module.register_forward_pre_hook(_keep_eval))
    object.__setattr__(model, _HOOKS, handles)
