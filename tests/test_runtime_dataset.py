"""A dataset registered at run time (`register_dataset` from the user's own code, after visionfit was
imported) trains through `visionfit train --dataset NAME` and through the Python API: the config
reads the registry when it needs it, never a list frozen at import."""

from __future__ import annotations

import json

import pytest
import torch

import visionfit
from visionfit.cli import main
from visionfit.data import DataSplits, register_dataset
from visionfit.data.registry import DataRequest, dataset_names
from visionfit.data.samples import ArraySamples
from visionfit.errors import UserError

NAME = "runtime-stripes"


def stripes(request: DataRequest) -> DataSplits:
    """Two classes told apart by brightness: 16 training and 8 test images of 32 px."""
    generator = torch.Generator().manual_seed(request.seed)

    def samples(count: int) -> ArraySamples:
        labels = torch.arange(count) % 2
        noise = torch.randint(0, 60, (count, 3, 32, 32), generator=generator)
        images = (noise + labels.view(-1, 1, 1, 1) * 150).to(torch.uint8)
        return ArraySamples(images, labels)

    return DataSplits(NAME, ["dark", "light"], samples(16), samples(8), "stripes made at run time")


@pytest.fixture
def registered():
    from visionfit.data import registry

    register_dataset(NAME, stripes, description="stripes made at run time")
    yield NAME
    registry._SOURCES.pop(NAME)


def settings(tmp_path) -> list[str]:
    return [
        "--model", "cifar10-quick", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--workers", "0", "--no-tensorboard", "--run-dir", str(tmp_path),
    ]  # fmt: skip


def test_a_dataset_registered_at_run_time_trains_from_the_command_line(registered, tmp_path, capsys):
    assert registered in dataset_names()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "stripes made at run time" in help_text  # --dataset's help, read when the parser is built
    code = main(["train", "--dataset", registered, *settings(tmp_path), "--name", "cli"])
    assert code == 0, capsys.readouterr().err
    config = (tmp_path / "cli" / "config.yaml").read_text()
    assert f"dataset: {registered}" in config
    record = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1


def test_a_dataset_registered_at_run_time_trains_through_the_python_api(registered, tmp_path):
    result = visionfit.train(
        dataset=registered,
        model="cifar10-quick",
        epochs=1,
        batch_size=8,
        device="cpu",
        workers=0,
        tensorboard=False,
        run_dir=str(tmp_path),
        name="api",
    )
    assert result.classes == ["dark", "light"] and len(result.history) == 1


def test_an_unknown_dataset_is_still_refused_in_one_line():
    with pytest.raises(UserError, match="--dataset must be one of .*folder"):
        visionfit.build_config(flag_values={"dataset": "no-such-data"})
