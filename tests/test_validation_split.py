"""A validation split: train, val and test as three things; best on val, test once at the end."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

import visionfit.engine.epochs as epochs
import visionfit.training as training
from conftest import make_folder_dataset
from visionfit.config import build_config, save_config
from visionfit.data.registry import (
    DataSplits,
    SplitShares,
    hold_out_validation,
    load_data,
    saved_split_settings,
)
from visionfit.data.samples import ArraySamples
from visionfit.data.splits import stratified_indices
from visionfit.errors import UserError
from visionfit.evaluation import evaluate_checkpoint
from visionfit.training import train

CLASSES = ["a", "b", "c"]


class WatchedSamples(ArraySamples):
    """Test pictures that write down every read into `log`."""

    log: ClassVar[list[tuple[str, int]]] = []

    def _read(self) -> None:
        self.log.append(("test read", -1))

    def label_tensor(self) -> torch.Tensor:
        self._read()
        return super().label_tensor()

    def picture(self, index: int) -> torch.Tensor:
        self._read()
        return super().picture(index)

    def images_at(self, preprocess: Any, notify: Any) -> torch.Tensor:
        self._read()
        return super().images_at(preprocess, notify)


def pictures(count: int, seed: int) -> ArraySamples:
    """Three colours, lightly noisy, 32 px: learnable in an epoch or two."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    base = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.float32)[labels]
    noise = torch.randn(count, 3, 32, 32, generator=generator) * 20
    images = (base[:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return ArraySamples(images, labels)


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Training data whose test split logs its reads, and the epochs' starts and ends in one log."""
    log: ClassVar[list[tuple[str, int]]] = []
    monkeypatch.setattr(WatchedSamples, "log", log)
    test = pictures(30, seed=2)

    def fake_load_data(dataset: Any, data_dir: Any, **options: Any) -> DataSplits:
        data = DataSplits(
            "cifar10-sample", CLASSES, pictures(60, seed=1), WatchedSamples(test.images, test.labels), "toy"
        )
        shares = options["shares"]
        if shares.val_fraction is None:
            return data
        return hold_out_validation(data, shares.val_fraction, shares.seed)

    real_train_epoch = epochs.train_epoch

    def logged_train_epoch(run: Any, state: Any) -> Any:
        log.append(("train", state.epoch))
        result = real_train_epoch(run, state)
        log.append(("trained", state.epoch))
        return result

    monkeypatch.setattr(training, "load_data", fake_load_data)
    monkeypatch.setattr(epochs, "train_epoch", logged_train_epoch)
    return log


def run_settings(tmp_path: Path, data_path: str, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": "cifar10-sample",
        "model": "cifar10-quick",
        "epochs": 2,
        "batch_size": 10,
        "workers": 0,
        "data_path": data_path,
        "run_dir": str(tmp_path / "runs"),
        **extra,
    }


@pytest.mark.parametrize("data_path", ["memory", "loader"])
def test_a_run_with_validation_reads_the_test_set_only_after_its_last_epoch(watched, tmp_path, data_path):
    result = train(**run_settings(tmp_path, data_path, val_fraction=0.2))
    last_epoch_done = watched.index(("trained", 2))
    reads = [position for position, entry in enumerate(watched) if entry[0] == "test read"]
    assert reads, "the test set is measured at the end"
    assert min(reads) > last_epoch_done
    assert all(record["test"] is None and record["val"]["count"] == 12 for record in result.history)
    assert result.test is not None and result.test["count"] == 30
    status = json.loads((result.run_dir / "run.json").read_text())
    assert status["best_chosen_on"] == "val" and status["test"]["accuracy"] == result.test["accuracy"]


@pytest.fixture
def visionfit_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the visionfit logger whatever earlier tests did to it: caplog's handler sits on
    the logger itself, so `setup_logging` leaves it alone (it would otherwise stop propagation to
    the root logger, where caplog listens, when this test runs first in its process)."""
    visionfit_logger = logging.getLogger("visionfit")
    visionfit_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="visionfit"):
            yield caplog
    finally:
        visionfit_logger.removeHandler(caplog.handler)


def test_without_validation_best_is_chosen_on_test_and_the_run_says_so(watched, tmp_path, visionfit_log):
    # The control: the same watch sees the test set read during the epochs when there is no val.
    result = train(**run_settings(tmp_path, "memory"))
    reads = [position for position, entry in enumerate(watched) if entry[0] == "test read"]
    assert min(reads) < watched.index(("trained", 2))
    assert result.test is None and result.history[-1]["test"]["count"] == 30
    assert "val" not in result.history[-1]
    assert "no validation split: best is chosen on the test split" in visionfit_log.text
    assert json.loads((result.run_dir / "run.json").read_text())["best_chosen_on"] == "test"


def test_one_test_pass_at_the_end_chooses_nothing_and_says_nothing(watched, tmp_path, visionfit_log):
    # The control's data (no validation split), tested once, after the last epoch.
    result = train(**run_settings(tmp_path, "memory", test_every=2))
    assert len(result.history) == 2 and "test" in result.history[-1]  # the run did train and test
    assert "model: cifar10-quick" in visionfit_log.text  # the run's announcement was captured
    assert "no validation split" not in visionfit_log.text


def test_the_validation_split_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 3)
    kept, held = stratified_indices(labels, 0.2, seed=5)
    assert sorted(kept + held) == list(range(33))
    assert [int((labels[held] == label).sum()) for label in range(3)] == [2, 4, 1]
    assert stratified_indices(labels, 0.2, seed=5) == (kept, held)
    assert stratified_indices(labels, 0.2, seed=6)[1] != held


def test_val_fraction_holds_out_of_train_and_leaves_test_alone(folder_dataset):
    plain = load_data("folder", str(folder_dataset), shares=SplitShares(0.25, seed=0))
    data = load_data("folder", str(folder_dataset), shares=SplitShares(0.25, 0.34, seed=0))
    assert data.test.paths == plain.test.paths and plain.val is None
    assert data.val is not None and len(data.val) == 6 and len(data.train) == 12
    assert not set(data.val.paths) & set(data.train.paths)
    assert set(data.val.paths) | set(data.train.paths) == set(plain.train.paths)
    assert data.for_epochs().test is data.val and data.for_epochs().held_out == "val"


def test_train_val_and_test_folders_are_three_splits(tmp_path):
    root = make_folder_dataset(tmp_path / "three", split=True)
    (root / "val").rename(root / "test")
    make_folder_dataset(tmp_path / "other", split=True)
    (tmp_path / "other" / "val").rename(root / "val")
    data = load_data(None, str(root))
    assert data.val is not None and all("/val/" in str(path) for path in data.val.paths)
    assert all("/test/" in str(path) for path in data.test.paths)
    with pytest.raises(UserError, match="already has a validation split"):
        load_data(None, str(root), shares=SplitShares(val_fraction=0.2))


def test_train_and_val_folders_alone_keep_val_as_the_test_split(split_dataset):
    data = load_data(None, str(split_dataset))
    assert data.val is None and all("/val/" in str(path) for path in data.test.paths)


def test_an_old_saved_config_reads_val_fraction_as_test_fraction(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    save_config(build_config(), path)
    values = yaml.safe_load(path.read_text())
    values.pop("test_fraction")
    values["val_fraction"] = 0.3  # what a run saved before --test-fraction existed says
    with caplog.at_level(logging.INFO, logger="visionfit"):
        config = build_config(values, file_name=str(path))
    assert config.test_fraction == 0.3 and config.val_fraction is None
    assert caplog.text.count("read as test_fraction") == 1
    # A hand-written file naming only val_fraction means validation.
    assert build_config({"val_fraction": 0.2}).val_fraction == 0.2
    assert saved_split_settings({"val_fraction": 0.3, "seed": 4}) == SplitShares(0.3, None, 4)


def test_eval_finds_the_runs_own_validation_and_test_splits(folder_dataset, tmp_path):
    result = train(
        dataset="folder",
        data_dir=str(folder_dataset),
        test_fraction=0.25,
        val_fraction=0.34,
        epochs=1,
        batch_size=4,
        workers=0,
        model="cifar10-quick",
        input_size=32,
        run_dir=str(tmp_path / "runs"),
    )
    assert evaluate_checkpoint(result.best_checkpoint, split="val").report["count"] == 6
    assert evaluate_checkpoint(result.best_checkpoint, split="test").report["count"] == 6
