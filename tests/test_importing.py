"""`visionfit import`: tutorial torch.save files (whole pickled modules and state dicts) become
visionfit checkpoints that predict what the old script predicted, without running their code."""

import os
import sys
import textwrap

import pytest
import torch
from PIL import Image
from torchvision import transforms

import visionfit
from conftest import make_image
from visionfit.cli import main
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.errors import UserError
from visionfit.importing import import_checkpoint, read_old_weights

CIFAR_CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"

TUTORIAL_MODEL = """
import os
from torch import nn


class Tudui(nn.Module):
    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, 1, 2), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, 1, 2), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.model1(x)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Trojan(Tudui):
    def __init__(self, marker):
        super().__init__()
        self.note = Payload(marker)
"""


@pytest.fixture
def tutorial(tmp_path, monkeypatch):
    """The user's model.py, importable while saving (as in the tutorial) and gone afterwards."""
    source = tmp_path / "usercode"
    source.mkdir()
    (source / "tudui_model.py").write_text(textwrap.dedent(TUTORIAL_MODEL))
    monkeypatch.syspath_prepend(str(source))
    import tudui_model

    yield tudui_model
    sys.modules.pop("tudui_model", None)


def old_script_classes(model, paths):
    """The tutorial's validation routine: RGB, Resize((32, 32)), ToTensor, argmax."""
    transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
        return model.eval()(batch).argmax(1).tolist()


@pytest.mark.parametrize("kind", ["module", "state_dict"])
def test_imported_checkpoint_predicts_what_the_old_script_did(tutorial, tmp_path, kind, monkeypatch):
    torch.manual_seed(0)
    model = tutorial.Tudui()
    old = tmp_path / f"tudui_9_{kind}.pth"
    torch.save(model if kind == "module" else model.state_dict(), old)
    monkeypatch.delitem(sys.modules, "tudui_model")  # the user's class is not importable any more
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if "usercode" not in entry])

    new, found = import_checkpoint(old, model="cifar10-quick", classes=CIFAR_CLASSES.split(","))
    assert new == old.with_suffix(".safetensors")
    assert found == ("whole pickled module tudui_model.Tudui" if kind == "module" else "state dict")
    checkpoint = load_checkpoint(new)
    assert Preprocess.from_dict(checkpoint.metadata["preprocess"]) == Preprocess(
        32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_mode="squash"
    )
    assert checkpoint.metadata["imported_from"]["file"] == old.name

    paths = []
    for index in range(12):
        paths.append(tmp_path / f"image{index}.png")
        make_image(paths[-1], (25 * index, 255 - 20 * index, 90), size=(32, 32), seed=index)
    predictor = visionfit.load(new, device="cpu", precision="fp32")
    names = CIFAR_CLASSES.split(",")
    expected = [names[index] for index in old_script_classes(model, paths)]
    assert [top[0][0] for top in predictor.predict(paths)] == expected
    assert len(checkpoint.model_state) == len(model.state_dict())
    for name, tensor in model.state_dict().items():  # Tudui's model1.0.weight is cifar10-quick's 0.weight
        assert torch.equal(tensor, checkpoint.model_state[name.removeprefix("model1.")]), name


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tutorial, tmp_path):
    marker = tmp_path / "ran"
    old = tmp_path / "trojan.pth"
    torch.save(tutorial.Trojan(str(marker)), old)
    with pytest.raises(UserError, match=r"refused .*system.*nothing was run"):
        import_checkpoint(old, model="cifar10-quick", classes=CIFAR_CLASSES.split(","))
    assert not marker.exists()
    assert not old.with_suffix(".safetensors").exists()


def test_files_holding_anything_else_are_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="neither a model nor a state dict"):
        read_old_weights(tmp_path / "list.pth")
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(UserError, match="not a readable torch.save file"):
        read_old_weights(tmp_path / "notes.pth")
    with pytest.raises(UserError, match="does not exist"):
        read_old_weights(tmp_path / "missing.pth")


def test_weights_that_do_not_fit_name_the_tensor(tutorial, tmp_path):
    torch.save(tutorial.Tudui().state_dict(), tmp_path / "old.pth")
    with pytest.raises(UserError, match=r"model1.8.weight \[10, 64\] does not fit cifar10-quick's 8.weight"):
        import_checkpoint(tmp_path / "old.pth", model="cifar10-quick", classes=["a", "b", "c"])
    torch.save({"weight": torch.zeros(3)}, tmp_path / "small.pth")
    with pytest.raises(UserError, match="holds 1 tensors but model cifar10-quick has 10"):
        import_checkpoint(tmp_path / "small.pth", model="cifar10-quick", classes=["a", "b", "c"])


def test_cli_import_with_classes_from_a_folder_and_custom_preprocessing(tutorial, tmp_path, capsys):
    torch.save({"state_dict": tutorial.Tudui().state_dict(), "epoch": 9}, tmp_path / "old.pth")
    for name in CIFAR_CLASSES.split(","):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    out = tmp_path / "new.safetensors"
    code = main(
        [
            "import",
            str(tmp_path / "old.pth"),
            "--classes-from",
            str(tmp_path / "data"),
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and str(out) in capsys.readouterr().out
    checkpoint = load_checkpoint(out)
    assert checkpoint.classes == CIFAR_CLASSES.split(",")
    assert checkpoint.metadata["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert checkpoint.metadata["preprocess"]["std"] == [0.25, 0.25, 0.25]


def test_cli_import_errors_are_one_line(tmp_path, capsys):
    torch.save([1], tmp_path / "x.pth")
    assert main(["import", str(tmp_path / "x.pth")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["import", str(tmp_path / "x.pth"), "--classes", "a,b"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("visionfit: error:") and error.count("\n") == 1 and "Traceback" not in error
    assert os.listdir(tmp_path) == ["x.pth"]
