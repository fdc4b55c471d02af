"""Exact resume: a run interrupted anywhere and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import visionfit.engine.epochs as epochs
from conftest import make_image
from visionfit.cli import main
from visionfit.engine.checkpoint_file import load_checkpoint, previous_path
from visionfit.errors import UserError
from visionfit.training import train


def make_noisy_dataset(root: Path, per_class: int = 10) -> Path:
    """Three classes that overlap (heavy noise), so weights keep moving for many epochs."""
    for label, color in enumerate([(120, 100, 100), (100, 120, 100), (100, 100, 120)]):
        for index in range(per_class):
            path = root / f"class{label}" / f"{index}.png"
            make_image(path, color, size=(12, 12), seed=label * 1000 + index)
    return root


@pytest.fixture(scope="module")
def noisy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_noisy_dataset(tmp_path_factory.mktemp("noisy") / "data")


def settings(data: Path, run_dir: Path, **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "dataset": "folder",
        "data_dir": str(data),
        "test_fraction": 0.2,
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.05,
        "workers": 0,
        "deterministic": True,
        "checkpoint_every_steps": 1,
        "checkpoint_every_minutes": 0.0,
        "log_every": 1,
        "run_dir": str(run_dir),
    }
    values.update(extra)
    return values


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make training stop, as if killed, after `steps` more optimizer steps."""
    real = epochs.train_steps
    counter = {"left": steps}

    def stopping(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for output in real(*args, **kwargs):
            yield output
            counter["left"] -= 1
            if counter["left"] == 0:
                raise Interrupt

    monkeypatch.setattr(epochs, "train_steps", stopping)


def final_state(run: Path) -> dict[str, torch.Tensor]:
    """Weights and optimizer state of the run's last checkpoint (RNG states are compared too)."""
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def records(run: Path) -> list[dict[str, object]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    timing = ("train_seconds", "train_images_per_second", "test_seconds")
    return [{key: value for key, value in json.loads(line).items() if key not in timing} for line in lines]


def assert_same_run(first: Path, second: Path) -> None:
    reference, resumed = final_state(first), final_state(second)
    assert sorted(reference) == sorted(resumed)
    assert any(name.startswith("optimizer/") for name in reference)
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    assert records(first) == records(second)


def assert_same_scalars(reference: Path, run: Path) -> None:
    """TensorBoard shows the same points: none lost, none duplicated by a resume."""

    def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        return [(event.step, event.value) for event in events.Scalars(tag)]

    for tag in ("train/loss", "train/lr", "test/accuracy", "epoch"):
        assert scalars(run, tag) == scalars(reference, tag), tag


@pytest.fixture(scope="module")
def reference_run(noisy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    return train(**settings(noisy_dataset, run_dir, name="reference")).run_dir


@pytest.mark.parametrize("stop_after", [1, 5, 6, 13, 17])  # 6 steps an epoch: mid-epoch and boundaries
def test_interrupted_and_resumed_run_is_bit_identical(
    noisy_dataset, reference_run, tmp_path, monkeypatch, stop_after
):
    with monkeypatch.context() as patch:
        interrupt_after(patch, stop_after)
        with pytest.raises(Interrupt):
            train(**settings(noisy_dataset, tmp_path, name="interrupted"))
    run = tmp_path / "interrupted"
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    train(resume=run)
    assert_same_run(reference_run, run)


# Weight averaging of a BatchNorm network, trained on augmented and mixed batches.
AVERAGED = {
    "model": "airnet",
    "model_args": {"width": 8},
    "ema": 0.9,
    "auto_augment": "trivialwide",
    "random_erasing": 0.25,
    "mixup": 0.2,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
}


@pytest.fixture(scope="module")
def averaged_reference_run(noisy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("averaged-reference")
    return train(**settings(noisy_dataset, run_dir, name="reference", **AVERAGED)).run_dir


@pytest.mark.parametrize("stop_after", [1, 6, 13])
def test_a_run_with_weight_averaging_and_augmentations_resumes_bit_identical(
    noisy_dataset, averaged_reference_run, tmp_path, monkeypatch, stop_after
):
    """The average and the raw training weights both come back exactly, and the augmentations
    draw the same for the batches after the checkpoint."""
    with monkeypatch.context() as patch:
        interrupt_after(patch, stop_after)
        with pytest.raises(Interrupt):
            train(**settings(noisy_dataset, tmp_path, name="averaged", **AVERAGED))
    train(resume=tmp_path / "averaged")
    assert_same_run(averaged_reference_run, tmp_path / "averaged")
    state = final_state(averaged_reference_run)
    raw = {name[17:]: value for name, value in state.items() if name.startswith("training_weights/")}
    assert raw.keys() == {name for name in state if "/" not in name}
    assert not torch.equal(raw["head.weight"], state["head.weight"])  # the average is saved, not the raw


@pytest.fixture(scope="module")
def loader_reference_run(noisy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("loader-reference")
    return train(**settings(noisy_dataset, run_dir, name="reference", data_path="loader")).run_dir


def test_resume_with_data_workers_and_rare_checkpoints(
    noisy_dataset, loader_reference_run, tmp_path, monkeypatch
):
    """The per-sample loader path with workers > 0 and a checkpoint only every 4 steps: the steps
    after it are redone identically. (The other tests run on the default in-memory path.)"""
    options = settings(
        noisy_dataset, tmp_path, name="workers", workers=2, checkpoint_every_steps=4, data_path="loader"
    )
    with monkeypatch.context() as patch:
        interrupt_after(patch, 10)
        with pytest.raises(Interrupt):
            train(**options)
    train(resume=tmp_path / "workers", workers=2)
    assert_same_run(loader_reference_run, tmp_path / "workers")
    # steps 9 and 10 were logged after the step-8 checkpoint, then again after the resume
    assert_same_scalars(loader_reference_run, tmp_path / "workers")


def test_the_memory_and_loader_paths_train_differently_only_by_augmentation(noisy_dataset, tmp_path):
    """Without augmentation both paths give the same batches, so the same run (to float rounding)."""
    runs = [
        train(**settings(noisy_dataset, tmp_path, name=path, data_path=path, augment=False, epochs=1))
        for path in ("memory", "loader")
    ]
    first, second = (final_state(result.run_dir) for result in runs)
    compared = [name for name in first if not name.startswith("rng/")]
    assert "0.weight" in compared and any(name.startswith("optimizer/") for name in compared)
    for name in compared:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-5, msg=name)


def test_two_interruptions_and_tensorboard_has_no_duplicated_points(
    noisy_dataset, reference_run, tmp_path, monkeypatch
):
    run = tmp_path / "twice"
    for stop_after, resume in ((4, None), (7, run)):
        with monkeypatch.context() as patch:
            interrupt_after(patch, stop_after)
            with pytest.raises(Interrupt):
                if resume is None:
                    train(**settings(noisy_dataset, tmp_path, name="twice"))
                else:
                    train(resume=resume)
    train(resume=run)
    assert_same_run(reference_run, run)

    assert_same_scalars(reference_run, run)


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    noisy_dataset, reference_run, tmp_path, monkeypatch, capsys
):
    with monkeypatch.context() as patch:
        interrupt_after(patch, 8)
        with pytest.raises(Interrupt):
            train(**settings(noisy_dataset, tmp_path, name="damaged"))
    last = tmp_path / "damaged" / "checkpoints" / "last.safetensors"
    assert load_checkpoint(previous_path(last)).metadata["step"] == 7
    data = bytearray(last.read_bytes())
    data[-5] ^= 0xFF
    last.write_bytes(bytes(data))
    train(resume=tmp_path / "damaged")
    assert "falling back to the previous checkpoint" in capsys.readouterr().out
    assert_same_run(reference_run, tmp_path / "damaged")


def test_a_run_killed_before_its_first_checkpoint_starts_over_in_its_folder(
    noisy_dataset, reference_run, tmp_path, monkeypatch
):
    options = settings(noisy_dataset, tmp_path, name="early", checkpoint_every_steps=0)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        with pytest.raises(Interrupt):
            train(**options)
    assert not (tmp_path / "early" / "checkpoints" / "last.safetensors").exists()
    train(resume=tmp_path / "early")
    assert_same_run(reference_run, tmp_path / "early")


def test_resume_refuses_changed_settings_and_finished_runs(
    noisy_dataset, reference_run, tmp_path, monkeypatch, capsys
):
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupt):
            train(**settings(noisy_dataset, tmp_path, name="changed"))
    with pytest.raises(UserError, match=r"cannot resume .* --lr \(0.05 in the run\)"):
        train(resume=tmp_path / "changed", lr=0.1)
    code = main(["train", "--resume", str(tmp_path / "changed"), "--batch-size", "8"])
    assert code == 2 and "--batch-size (4 in the run)" in capsys.readouterr().err
    with pytest.raises(UserError, match="already finished"):
        train(resume=reference_run)
    code = main(["train", "--resume", str(tmp_path / "nothing")])
    assert code == 2 and "not a visionfit run folder" in capsys.readouterr().err


def test_resume_auto_picks_the_unfinished_run_with_the_same_config(
    noisy_dataset, reference_run, tmp_path, monkeypatch
):
    options = settings(noisy_dataset, tmp_path)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 9)
        with pytest.raises(Interrupt):
            train(**options, name="unfinished")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(Interrupt):
            train(**{**options, "lr": 0.02}, name="other-config")
    result = train(**options, resume="auto")
    assert result.run_dir == tmp_path / "unfinished"
    assert_same_run(reference_run, result.run_dir)
    fresh = train(**options, resume="auto")  # nothing unfinished with this config left
    assert fresh.run_dir not in (tmp_path / "unfinished", tmp_path / "other-config")


def test_cli_resume_continues_a_run(noisy_dataset, reference_run, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        interrupt_after(patch, 11)
        with pytest.raises(Interrupt):
            train(**settings(noisy_dataset, tmp_path, name="cli"))
    assert main(["train", "--resume", str(tmp_path / "cli"), "--log-every", "0"]) == 0
    assert "resuming at epoch 2, batch 5 (step 11)" in capsys.readouterr().out
    assert_same_run(reference_run, tmp_path / "cli")
