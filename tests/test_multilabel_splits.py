"""--val-fraction with several labels per image: iterative stratification holds out near the
fraction of every class at once, for a label file without splits and for one with a test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visionfit.data.label_options import LabelFileOptions
from visionfit.data.registry import SplitShares, load_data
from visionfit.data.splits import iterative_stratified_indices
from visionfit.errors import UserError


def label_sets(count: int = 600, classes: int = 8, seed: int = 0) -> torch.Tensor:
    """An (N, C) 0/1 matrix with common and rare classes that co-occur, as real sets have."""
    rng = np.random.default_rng(seed)
    frequency = np.array([0.5, 0.3, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02])[:classes]
    matrix = rng.random((count, classes)) < frequency
    matrix[:, 1] |= matrix[:, 0] & (rng.random(count) < 0.4)  # class 1 often comes with class 0
    return torch.from_numpy(matrix.astype(np.float32))


def val_shares(targets: torch.Tensor, held_out: list[int]) -> np.ndarray:
    counts = targets.sum(dim=0).numpy()
    return targets[held_out].sum(dim=0).numpy() / counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_is_held_out_near_the_fraction(seed):
    targets = label_sets(seed=seed)
    kept, held_out = iterative_stratified_indices(targets, 0.2, seed)
    assert sorted(kept + held_out) == list(range(len(targets))) and not set(kept) & set(held_out)
    assert abs(len(held_out) - 0.2 * len(targets)) <= 0.02 * len(targets)
    counts = targets.sum(dim=0).numpy()
    # Each class within one image of its exact share (the rarest have about a dozen images).
    allowed = 1.0 / counts + 1e-9
    assert np.all(np.abs(val_shares(targets, held_out) - 0.2) <= allowed), val_shares(targets, held_out)
    assert iterative_stratified_indices(targets, 0.2, seed) == (kept, held_out)  # seeded


def test_it_beats_a_random_draw_on_rare_classes():
    targets = label_sets(seed=5)
    _, held_out = iterative_stratified_indices(targets, 0.2, 5)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(5)).tolist()
    random_error = np.abs(val_shares(targets, order[:120]) - 0.2).max()
    assert np.abs(val_shares(targets, held_out) - 0.2).max() < random_error


def write_label_file(root: Path, with_test: bool) -> Path:
    """A multi-label CSV over picture files (only their names matter before training)."""
    from conftest import make_image

    targets = label_sets(count=200, classes=5, seed=3)
    names = ["sky", "sea", "sand", "boat", "bird"]
    lines = ["file,labels,split"]
    for index, row in enumerate(targets.tolist()):
        make_image(root / f"{index}.png", (index % 255, 100, 100), size=(8, 8), seed=index)
        labels = ";".join(name for name, value in zip(names, row, strict=True) if value) or "sky"
        split = "test" if with_test and index % 5 == 0 else "train"
        lines.append(f"{index}.png,{labels},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_a_multilabel_label_file_holds_out_stratified_validation(tmp_path):
    labels = write_label_file(tmp_path / "plain", with_test=False)
    data = load_data(
        None, None, shares=SplitShares(val_fraction=0.25), label_file=LabelFileOptions(str(labels))
    )
    assert data.task == "multilabel" and data.validation and f"{len(data.test)} val)" in data.description
    assert abs(len(data.test) - 50) <= 4
    whole = torch.cat([data.train.label_tensor(), data.test.label_tensor()])
    shares = data.test.label_tensor().sum(dim=0) / whole.sum(dim=0)
    assert torch.all((shares - 0.25).abs() <= 1.0 / whole.sum(dim=0) + 1e-6), shares


def test_a_label_file_with_test_rows_gets_three_splits_and_val_rows_refuse(tmp_path):
    labels = write_label_file(tmp_path / "split", with_test=True)
    data = load_data(
        None, None, shares=SplitShares(val_fraction=0.25), label_file=LabelFileOptions(str(labels))
    )
    assert data.val is not None and len(data.test) == 40 and abs(len(data.val) - 40) <= 4
    assert len(data.train) + len(data.val) == 160
    assert not data.validation and data.for_epochs().held_out == "val"
    text = labels.read_text().replace(",test\n", ",val\n")
    labels.write_text(text)
    with pytest.raises(UserError, match="already has val rows; leave --val-fraction out"):
        load_data(None, None, shares=SplitShares(val_fraction=0.25), label_file=LabelFileOptions(str(labels)))
