"""The stratified draw of a validation split held out of the training samples (`--val-fraction`;
`registry.hold_out_validation` applies it to every dataset alike)."""

from __future__ import annotations

import torch

# Added to the run's seed, so that the validation draw differs from a folder's test draw.
VALIDATION_SEED_OFFSET = 7919


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) sample indices, both sorted: `fraction` of every class held out (at least one
    sample of each class with two or more, never all of a class), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    held_out: list[int] = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        count = round(len(members) * fraction)
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held_out.extend(members[:count])
        kept.extend(members[count:])
    return sorted(kept), sorted(held_out)
