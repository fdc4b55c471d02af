"""The stratified draw of a validation split held out of the training samples (`--val-fraction`;
`registry.hold_out_validation` applies it to every dataset alike): per class for one label per
image, iterative stratification for several."""

from __future__ import annotations

import numpy as np
import torch

# Added to the run's seed, so that the validation draw differs from a folder's test draw.
VALIDATION_SEED_OFFSET = 7919


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) sample indices, both sorted: `fraction` of every class held out (at least one
    sample of each class with two or more, never all of a class), drawn with `seed`. Labels that
    are an (N, C) 0/1 matrix (several per image) are split by `iterative_stratified_indices`."""
    if labels.dim() == 2:
        return iterative_stratified_indices(labels, fraction, seed)
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


def iterative_stratified_indices(
    targets: torch.Tensor, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(kept, held out) sample indices, both sorted, for several labels per image: iterative
    stratification (Sechidis, Tsoumakas and Vlahavas, 2011), which holds out near `fraction` of
    every class at once. The rarest label left is placed first, each of its images going to the
    split that still wants most of that label (then most images; then the seeded draw); images
    without labels go where most images are still wanted. `targets`: an (N, C) 0/1 matrix."""
    labels = targets.bool().numpy()
    generator = np.random.default_rng(seed)
    shares = np.array([1.0 - fraction, fraction])
    wanted = shares * len(labels)  # images each split still wants
    wanted_labels = shares[:, None] * labels.sum(axis=0)[None, :]  # (2, C): each label's
    placed = np.full(len(labels), -1)
    left = labels.copy()
    while left.any():
        counts = left.sum(axis=0).astype(float)
        counts[counts == 0] = np.inf
        rarest = np.flatnonzero(counts == counts.min())
        label = int(generator.choice(rarest))
        for index in generator.permutation(np.flatnonzero(left[:, label])):
            split = _neediest(wanted_labels[:, label], wanted, generator)
            placed[index] = split
            wanted[split] -= 1
            wanted_labels[split] -= labels[index]
            left[index] = False
    for index in generator.permutation(np.flatnonzero(placed < 0)):
        split = _neediest(wanted, wanted, generator)
        placed[index] = split
        wanted[split] -= 1
    return np.flatnonzero(placed == 0).tolist(), np.flatnonzero(placed == 1).tolist()


def _neediest(first: np.ndarray, second: np.ndarray, generator: np.random.Generator) -> int:
    """The split with the most `first` still wanted, ties broken by `second`, then by the draw."""
    candidates = np.flatnonzero(first == first.max())
    if len(candidates) > 1:
        candidates = candidates[second[candidates] == second[candidates].max()]
    return int(generator.choice(candidates)) if len(candidates) > 1 else int(candidates[0])
