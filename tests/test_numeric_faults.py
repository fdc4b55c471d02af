"""A NaN batch stops the run at once (last good checkpoint intact) or is skipped; clipping works."""

from __future__ import annotations

import json

import pytest
import torch

from visionfit.cli import main
from visionfit.data.loaders import SampleDataset
from visionfit.engine.loops import train_steps
from visionfit.engine.optim import Optimization
from visionfit.runtime import Runtime
from visionfit.training import train

POISONED_INDEX = 5


@pytest.fixture
def poisoned(monkeypatch):
    """Training sample 5 becomes all NaN, as a corrupt input or an overflow would (the pictures go
    over as floats on the 0-255 scale, which the batch stage takes as it takes uint8)."""
    real = SampleDataset.__getitem__

    def getitem(self, key):
        image, label, position = real(self, key)
        image = image.float()
        index = key[0] if isinstance(key, tuple) else key
        if isinstance(key, tuple) and index == POISONED_INDEX:
            image = torch.full_like(image, float("nan"))
        return image, label, position

    monkeypatch.setattr(SampleDataset, "__getitem__", getitem)


def options(folder_dataset, tmp_path, *extra):
    return [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--run-dir",
        str(tmp_path),
        "--name",
        "nan",
        "--checkpoint-every-steps",
        "1",
        "--no-tensorboard",
        "--no-drop-last",
        "--data-path",
        "loader",  # the poison is applied per sample
        *extra,
    ]


def test_a_nan_loss_stops_the_run_within_one_step(poisoned, folder_dataset, tmp_path, capsys):
    code = main(options(folder_dataset, tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "training stopped at step" in err and "the loss is nan" in err
    assert "last good checkpoint" in err and "--on-nan skip" in err
    run = tmp_path / "nan"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed"
    stopped_step = int(err.split("training stopped at step ")[1].split()[0])
    checkpoint = run / "checkpoints" / "last.safetensors"
    if stopped_step > 1:  # the step before the NaN was checkpointed, and that file is intact
        from visionfit.engine.checkpoint_file import load_checkpoint

        saved = load_checkpoint(checkpoint)
        assert saved.metadata["step"] == stopped_step - 1
        assert all(torch.isfinite(tensor).all() for tensor in saved.model_state.values())


def test_skip_leaves_out_nan_batches_and_counts_them(poisoned, folder_dataset, tmp_path, capsys):
    assert main(options(folder_dataset, tmp_path, "--on-nan", "skip")) == 0
    out = capsys.readouterr().out
    assert "skipped a batch whose loss is nan" in out
    records = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_batches"] == 2  # one poisoned batch in each of the two epochs
    assert all(record["train_loss"] == record["train_loss"] for record in records)  # not NaN
    from visionfit.serialization import load_model

    model = load_model(tmp_path / "nan")
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    runtime = Runtime(device=torch.device("cpu"))
    batch = (torch.randn(8, 4) * 1000, torch.randint(0, 3, (8,)))
    outputs = list(
        train_steps(
            model,
            [batch],
            Optimization(torch.nn.CrossEntropyLoss(), optimizer, scheduler, runtime.grad_scaler()),
            runtime,
            clip_grad_norm=0.01,
        )
    )
    assert len(outputs) == 1 and not outputs[0].skipped
    change = torch.cat(
        [(after - start).flatten() for after, start in zip(model.parameters(), before, strict=True)]
    )
    assert 0 < change.norm() <= 0.01 + 1e-6


def test_train_api_reports_nan_as_a_user_error(poisoned, folder_dataset, tmp_path):
    from visionfit.errors import UserError

    with pytest.raises(UserError, match="training stopped at step"):
        train(
            dataset="folder",
            data_dir=str(folder_dataset),
            epochs=1,
            batch_size=4,
            workers=0,
            data_path="loader",
            run_dir=str(tmp_path),
            tensorboard=False,
        )
