"""Unbalanced classes: --class-weights, --sampler balanced, balanced accuracy, --best-metric, --patience."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visionfit.training as training
from conftest import make_image
from test_multilabel import multilabel_set, train_arguments  # noqa: F401 (a fixture)
from test_resume import Interrupt, assert_same_run, interrupt_after
from visionfit.data.loaders import EpochBatchSampler
from visionfit.data.memory import MemoryBatches
from visionfit.data.order import EpochOrder, balanced_weights, epoch_order
from visionfit.engine.balance import loss_class_weights
from visionfit.engine.metrics import classification_report, format_report
from visionfit.errors import UserError
from visionfit.training import train


def make_unbalanced_dataset(root: Path) -> Path:
    """Two classes, 24 and 4 images, that overlap (noise), 12 px."""
    for label, (color, count) in enumerate([((120, 100, 100), 24), ((100, 120, 100), 4)]):
        for index in range(count):
            make_image(
                root / f"class{label}" / f"{index}.png", color, size=(12, 12), seed=label * 1000 + index
            )
    return root


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_unbalanced_dataset(tmp_path_factory.mktemp("unbalanced") / "data")


def settings(data: Path, run_dir: Path, **extra: object) -> dict[str, object]:
    return {
        "dataset": "folder",
        "data_dir": str(data),
        "test_fraction": 0.25,
        "model": "cifar10-quick",
        "input_size": 32,
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.05,
        "workers": 0,
        "deterministic": True,
        "checkpoint_every_steps": 1,
        "checkpoint_every_minutes": 0.0,
        "run_dir": str(run_dir),
        **extra,
    }


def test_balanced_accuracy_is_scikit_learns_and_in_the_table():
    true = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    confusion = torch.zeros(4, 4, dtype=torch.int64)  # class 3 has no images: not averaged
    for target, guess in zip(true.tolist(), predicted.tolist(), strict=True):
        confusion[target, guess] += 1
    classes = ["a", "b", "c", "d"]
    report = classification_report(confusion, classes)
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, predicted))
    assert f"(balanced {report['balanced_accuracy']:.3f})" in format_report(report, classes)


def test_class_weights_auto_effective_and_given():
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 0)
    classes = ["a", "b", "c"]
    auto = loss_class_weights("auto", labels, classes)
    assert auto.tolist() == pytest.approx([40 / (3 * 30), 40 / (3 * 10), 0.0])
    effective = loss_class_weights("effective", labels, classes)
    assert effective[1] > effective[0] and effective[2] == 0 and effective[:2].mean() == pytest.approx(1.0)
    assert loss_class_weights("1,2.5,0", labels, classes).tolist() == [1.0, 2.5, 0.0]
    assert loss_class_weights(None, labels, classes) is None
    with pytest.raises(UserError, match="gives 2 weights for 3 classes"):
        loss_class_weights("1,2", labels, classes)


def test_the_balanced_draw_evens_the_classes_is_seeded_and_the_same_on_both_data_paths():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = balanced_weights(labels)
    order = epoch_order(100, seed=3, epoch=2, shuffle=True, weights=weights)
    assert 35 <= int((labels[order] == 1).sum()) <= 65  # about half, from a tenth
    assert torch.equal(order, epoch_order(100, seed=3, epoch=2, shuffle=True, weights=weights))
    assert not torch.equal(order, epoch_order(100, seed=3, epoch=3, shuffle=True, weights=weights))
    assert torch.equal(epoch_order(100, 3, 2, True), torch.randperm(100, generator=_generator_of(3, 2)))

    def walk() -> EpochOrder:
        return EpochOrder(100, 10, shuffle=True, seed=3, drop_last=True, weights=weights)

    sampler = EpochBatchSampler(walk())
    memory = MemoryBatches(
        torch.zeros(100, 3, 2, 2, dtype=torch.uint8), labels, walk(), device=torch.device("cpu")
    )
    for source in (sampler, memory):
        source.set_epoch(2, start_batch=3)  # a resumed epoch continues the same draw
    keys = [key for batch in sampler for key in batch]
    from_memory = [int(label) for _, batch_labels, _ in memory for label in batch_labels]
    assert [index for index, _, _ in keys] == order[30:].tolist()
    assert from_memory == labels[order[30:]].tolist()
    assert len({seed for _, seed, _ in keys}) == len(keys)  # a sample drawn twice is cropped twice anew


def _generator_of(seed: int, epoch: int) -> torch.Generator:
    from visionfit.data.order import sample_seed

    return torch.Generator().manual_seed(sample_seed(seed, epoch, -1))


def test_class_weights_reach_the_loss_and_are_printed(unbalanced, tmp_path, monkeypatch, visionfit_messages):
    seen = {}
    real = training.create_optimization

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        optimization = real(*args, **kwargs)
        seen["weight"] = optimization.loss_fn.weight
        return optimization

    monkeypatch.setattr(training, "create_optimization", spy)
    train(**settings(unbalanced, tmp_path, epochs=1, class_weights="auto"))
    assert seen["weight"].tolist() == pytest.approx(
        [21 / (2 * 18), 21 / (2 * 3)]
    )  # 18 + 3 after the test share
    assert "class weights (inverse frequency): class0 0.583, class1 3.5" in visionfit_messages


@pytest.mark.parametrize("stop_after", [2, 7])
def test_a_balanced_sampler_run_resumes_bit_identical(unbalanced, tmp_path, monkeypatch, stop_after):
    values = settings(unbalanced, tmp_path, sampler="balanced", class_weights="effective")
    reference = train(**values, name="reference").run_dir
    with monkeypatch.context() as patch:
        interrupt_after(patch, stop_after)
        with pytest.raises(Interrupt):
            train(**values, name="interrupted")
    train(resume=tmp_path / "interrupted")
    assert_same_run(reference, tmp_path / "interrupted")


def test_a_balanced_sampler_run_resumes_bit_identical_on_the_loader_path(unbalanced, tmp_path, monkeypatch):
    values = settings(unbalanced, tmp_path, sampler="balanced", data_path="loader", epochs=2)
    reference = train(**values, name="reference").run_dir
    with monkeypatch.context() as patch:
        interrupt_after(patch, 6)
        with pytest.raises(Interrupt):
            train(**values, name="interrupted")
    train(resume=tmp_path / "interrupted")
    assert_same_run(reference, tmp_path / "interrupted")


def test_best_metric_loss_chooses_the_lowest_validation_loss(unbalanced, tmp_path):
    result = train(**settings(unbalanced, tmp_path, epochs=3, val_fraction=0.25, best_metric="loss"))
    losses = {record["epoch"]: record["val"]["loss"] for record in result.history}
    assert result.best_epoch == min(losses, key=losses.get)
    status = json.loads((result.run_dir / "run.json").read_text())
    assert status["best_metric"] == "loss" and status["stopped"] == "trained all 3 epochs"
    assert "balanced_accuracy" in result.history[0]["val"] and "balanced_accuracy" in status["test"]
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("balanced_accuracy" in record["val"] for record in metrics)
    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("val/balanced_accuracy")) == 3


def test_patience_stops_when_validation_stops_improving(unbalanced, tmp_path, visionfit_messages):
    # Five validation images: accuracy can rise at most five times, so patience 1 ends 8 epochs early.
    result = train(**settings(unbalanced, tmp_path, epochs=8, val_fraction=0.25, patience=1))
    assert len(result.history) == result.best_epoch + 1 < 8
    status = json.loads((result.run_dir / "run.json").read_text())
    reason = "early stopping: val accuracy has not improved for 1 epoch (--patience 1; best epoch"
    assert status["stopped"] == f"{reason} {result.best_epoch})"
    assert status["status"] == "finished" and "test" in status and status["best_metric"] == "accuracy"
    assert any(reason in message for message in visionfit_messages)


def test_patience_needs_a_validation_split_and_metrics_suit_the_task(unbalanced, tmp_path):
    with pytest.raises(UserError, match="--patience stops on the validation split"):
        train(**settings(unbalanced, tmp_path, patience=2))
    assert not list(tmp_path.iterdir())  # refused before any run folder
    with pytest.raises(UserError, match="--best-metric map is for multi-label runs"):
        train(**settings(unbalanced, tmp_path, best_metric="map"))
    with pytest.raises(UserError, match="--class-weights must be auto, effective or one number"):
        train(**settings(unbalanced, tmp_path, class_weights="1,x"))
    with pytest.raises(UserError, match="gives 3 weights for 2 classes"):
        train(**settings(unbalanced, tmp_path, class_weights="1,2,3"))
    assert not list(tmp_path.iterdir())


def test_a_multilabel_run_chooses_best_by_macro_f1_and_refuses_class_weights(
    multilabel_set,  # noqa: F811 (the fixture imported above)
    tmp_path,
    capsys,
):
    from visionfit.cli import main

    runs = tmp_path / "runs"
    flags = ("--best-metric", "macro_f1", "--patience", "5", "--name", "run")
    assert main(train_arguments(multilabel_set, runs, *flags)) == 0
    records = [json.loads(line) for line in (runs / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [record["test"]["macro"]["f1"] for record in records]  # the label file's val rows
    status = json.loads((runs / "run" / "run.json").read_text())
    assert status["best_epoch"] == 1 + scores.index(max(scores))
    assert status["best_metric"] == "macro_f1" and status["stopped"] == "trained all 2 epochs"
    capsys.readouterr()
    for flags in (
        ("--class-weights", "auto"),
        ("--sampler", "balanced"),
        ("--best-metric", "balanced_accuracy"),
    ):
        assert main(train_arguments(multilabel_set, tmp_path / "refused", *flags)) == 2
        errors = [
            line for line in capsys.readouterr().err.splitlines() if line.startswith("visionfit: error")
        ]
        assert len(errors) == 1 and flags[0] in errors[0]
    assert not (tmp_path / "refused").exists()


def test_patience_counts_tested_epochs():
    from visionfit.config import TrainConfig
    from visionfit.engine.epochs import stop_reason
    from visionfit.engine.state import TrainState

    every_epoch = TrainConfig(epochs=20, patience=2)
    assert stop_reason(every_epoch, TrainState(epoch=6, best_epoch=4)) is None
    assert "for 2 epochs (--patience 2; best epoch 4)" in stop_reason(
        every_epoch, TrainState(epoch=7, best_epoch=4)
    )
    every_other = TrainConfig(epochs=20, patience=2, test_every=2)
    assert stop_reason(every_other, TrainState(epoch=8, best_epoch=4)) is None  # epoch 6 tested once since
    assert "for 2 tested epochs" in stop_reason(every_other, TrainState(epoch=9, best_epoch=4))
    assert stop_reason(every_other, TrainState(epoch=21, best_epoch=20)) == "trained all 20 epochs"
    assert stop_reason(TrainConfig(epochs=20), TrainState(epoch=15, best_epoch=1)) is None  # no --patience
