"""Your own nn.Module: by file or module reference, as an instance through the Python API, and
saved and loaded both ways without pickles."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import visionfit
from visionfit.cli import main
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.errors import UserError
from visionfit.models import create_model

TUDUI = textwrap.dedent(
    '''
    from torch import nn

    class Tudui(nn.Module):
        """The tutorial's network, written the tutorial's way (with a width argument)."""

        input_size = 32

        def __init__(self, num_classes=10, width=32):
            super().__init__()
            self.model = nn.Sequential(
                nn.Conv2d(3, width, 5, padding=2), nn.MaxPool2d(2),
                nn.Conv2d(width, width, 5, padding=2), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 5, padding=2), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.Linear(64, num_classes),
            )

        def forward(self, x):
            return self.model(x)

    class FixedTen(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

        def forward(self, x):
            return self.layer(x)
    '''
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "mymodels" / "tudui.py"
    path.parent.mkdir()
    path.write_text(TUDUI)
    return path


def test_train_a_model_from_a_file_and_load_it_back(
    capsys, folder_dataset, model_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(model_file.parent.parent)
    reference = "mymodels/tudui.py:Tudui"
    code = main(
        [
            *["train", "--dataset", "folder", "--data-dir", str(folder_dataset), "--model", reference],
            *["--model-arg", "width=8", "--epochs", "1", "--batch-size", "4", "--workers", "0"],
            *["--run-dir", str(tmp_path / "runs"), "--name", "mine", "--no-tensorboard"],
        ]
    )
    assert code == 0, capsys.readouterr().err
    checkpoint_path = tmp_path / "runs" / "mine" / "checkpoints" / "best.safetensors"
    record = load_checkpoint(checkpoint_path).metadata["model"]
    assert record["name"] == reference and record["args"] == {"width": 8} and record["source"] == "file"
    assert record["file"] == str(model_file.resolve())
    assert load_checkpoint(checkpoint_path).metadata["preprocess"]["input_size"] == 32  # class attribute

    monkeypatch.chdir(tmp_path.parent)  # elsewhere: the recorded absolute path finds the file
    model = visionfit.load_model(checkpoint_path)
    assert model.model[0].out_channels == 8 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)

    model_file.rename(model_file.with_name("moved.py"))
    with pytest.raises(UserError, match=r"model file mymodels/tudui.py not found.*Tudui is defined there"):
        visionfit.load_model(checkpoint_path)


def test_package_module_reference_and_num_classes_only_when_taken(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(TUDUI)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert create_model("userpkg.nets:Tudui", 4, width=4)(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    model = create_model("userpkg.nets:FixedTen", 4)  # no num_classes argument: built as it is
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)
    with pytest.raises(UserError, match="has no class Tudoo; its nn.Module classes: FixedTen, Tudui"):
        create_model("userpkg.nets:Tudoo", 4)
    with pytest.raises(UserError, match="cannot import userpkg.missing"):
        create_model("userpkg.missing:Tudui", 4)


def test_a_model_whose_output_does_not_fit_the_classes_is_a_one_line_error(
    capsys, folder_dataset, model_file, tmp_path
):
    code = main(
        [
            *["train", "--dataset", "folder", "--data-dir", str(folder_dataset)],
            *["--model", f"{model_file}:FixedTen", "--input-size", "16", "--run-dir", str(tmp_path / "r")],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "returns shape (10,) per image, expected (3,) for 3 classes" in err


class Small(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(4, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def test_train_accepts_an_instance_and_its_checkpoint_loads_into_a_fresh_one(folder_dataset, tmp_path):
    result = visionfit.train(
        model=Small(3),
        dataset="folder",
        data_dir=str(folder_dataset),
        epochs=1,
        batch_size=4,
        workers=0,
        input_size=16,
        run_dir=str(tmp_path / "runs"),
        tensorboard=False,
    )
    record = load_checkpoint(result.best_checkpoint).metadata["model"]
    assert record["source"] == "instance" and record["name"].endswith(":Small")
    with pytest.raises(UserError, match=r"load_model\(path, model=YourModel"):
        visionfit.load_model(result.best_checkpoint)
    model = visionfit.load_model(result.best_checkpoint, model=Small(3))
    saved = load_checkpoint(result.best_checkpoint).model_state
    assert torch.equal(model.head.weight, saved["head.weight"])


def test_save_model_and_load_model_round_trip_registry_and_foreign_models(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", 2, head="append")
    path = visionfit.save_model(model, tmp_path / "resnet.safetensors", classes=["ant", "bee"])
    loaded = visionfit.load_model(path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    metadata = load_checkpoint(path).metadata
    assert metadata["classes"] == ["ant", "bee"] and metadata["model"]["head"] == "append"
    assert metadata["preprocess"]["input_size"] == 224
    again = visionfit.save_model(loaded, tmp_path / "again.safetensors")  # keeps classes and preprocessing
    assert load_checkpoint(again).metadata["classes"] == ["ant", "bee"]

    with pytest.raises(UserError, match="pass classes"):
        visionfit.save_model(Small(3), tmp_path / "small.safetensors")
    preprocess = Preprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    path = visionfit.save_model(
        Small(3), tmp_path / "small.safetensors", classes=["a", "b", "c"], preprocess=preprocess
    )
    assert isinstance(visionfit.load_model(path, model=Small(3)), Small)
    with pytest.raises(UserError, match="must end in .safetensors"):
        visionfit.save_model(Small(3), tmp_path / "small.pth", classes=["a", "b", "c"], preprocess=preprocess)


def test_checkpoints_from_before_the_model_record_still_load(tmp_path):
    from visionfit.engine.checkpoint_file import save_checkpoint

    model = create_model("cifar10-quick", 10)
    old_metadata = {  # what checkpoints held before heads, weights and user models existed
        "model": {"name": "cifar10-quick", "args": {}, "num_classes": 10},
        "classes": [str(index) for index in range(10)],
        "preprocess": {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "crop"},
    }
    save_checkpoint(tmp_path / "old.safetensors", model.state_dict(), old_metadata)
    loaded = visionfit.load_model(tmp_path / "old.safetensors")
    assert torch.equal(loaded[0].weight, model[0].weight)


def test_models_command_lists_the_zoo_and_details_one(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and not line.startswith("Also")}
    assert rows["resnet18"][1:4] == ["11.69M", "224px", "yes"]
    assert rows["cifar10-quick"][1:4] == ["0.15M", "32px", "no"]
    assert rows["inception_v3"][2] == "299px" and "vit_b_16" in rows and len(rows) > 80
    assert main(["models", "efficientnet_b0"]) == 0
    out = capsys.readouterr().out
    assert "resized to 256 then centre-cropped, bicubic" in out and "IMAGENET1K_V1" in out
    assert main(["models", "resnet19"]) == 2
    assert "did you mean 'resnet18'" in capsys.readouterr().err


MARKER_WRITER = textwrap.dedent(
    """
    from pathlib import Path
    Path({marker!r}).write_text("this code ran")
    """
)


def test_a_checkpoints_model_file_that_changed_is_refused_and_never_run(
    capsys, folder_dataset, model_file, tmp_path, monkeypatch
):
    """A checkpoint names its model file; a swapped file (here one that writes a marker when run)
    must not run on predict, eval or load_model without --trust-model-code."""
    monkeypatch.chdir(model_file.parent.parent)
    run = tmp_path / "runs" / "mine"
    code = main(
        [
            *[
                "train",
                "--dataset",
                "folder",
                "--data-dir",
                str(folder_dataset),
                "--model",
                "mymodels/tudui.py:Tudui",
            ],
            *["--model-arg", "width=8", "--epochs", "1", "--batch-size", "4", "--workers", "0"],
            *["--run-dir", str(run.parent), "--name", "mine", "--no-tensorboard"],
        ]
    )
    assert code == 0
    picture = next(folder_dataset.glob("apple/*.png"))
    capsys.readouterr()
    assert main(["predict", str(run), str(picture)]) == 0  # the file training used: runs, and says so
    assert f"running {model_file.resolve()}" in capsys.readouterr().err

    marker = tmp_path / "marker.txt"
    model_file.write_text(TUDUI + MARKER_WRITER.format(marker=str(marker)))
    for command in (["predict", str(run), str(picture)], ["eval", str(run)]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert "refusing to run" in error and "--trust-model-code" in error and error.count("\n") == 1
    with pytest.raises(UserError, match="not the one training used"):
        visionfit.load_model(run)
    with pytest.raises(UserError, match="not the one training used"):
        visionfit.load(run)
    assert not marker.exists()

    assert main(["predict", str(run), str(picture), "--trust-model-code"]) == 0
    assert marker.read_text() == "this code ran"  # trusted: runs, as asked
    assert "changed since training; trusted" in capsys.readouterr().err
