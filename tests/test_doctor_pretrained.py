"""Doctor's features from pretrained weights on the machine: a weights file in torchvision's cache
(a temporary TORCH_HOME holding random weights under resnet18's real file name; there is no network
here) is found without being named, read by the model zoo, fed as its weights expect, named in the
report, and cached; nothing is downloaded unless --pretrained NAME asks for it."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_folder_dataset, tree_digest
from visionfit.cli import main

pytest.importorskip("imagehash")
pytest.importorskip("sklearn")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchvision's cache in a temporary folder, and no network: any download attempt fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return tmp_path / "torch_home"


def fake_resnet18_file(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Random resnet18 weights saved where torchvision keeps the real ones once downloaded."""
    from torchvision.models import get_model, get_model_weights

    from visionfit.doctor.pretrained import cached_weights_file

    torch.manual_seed(3)
    state = get_model("resnet18", weights=None).state_dict()
    path = cached_weights_file(get_model_weights("resnet18").DEFAULT)
    assert path.is_relative_to(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def torchvision_features(state: dict[str, torch.Tensor], file: Path) -> np.ndarray:
    """What enters resnet18's classifier for `file`, computed by torchvision alone (its own
    preprocessing of these weights), to compare doctor's with."""
    from PIL import Image
    from torchvision.models import get_model, get_model_weights

    model = get_model("resnet18", weights=None)
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    preprocess = get_model_weights("resnet18").DEFAULT.transforms()
    with Image.open(file) as picture, torch.no_grad():
        return model.eval()(preprocess(picture.convert("RGB"))[None]).numpy()[0]


def run_doctor_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main(["doctor", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_doctor_takes_features_from_cached_pretrained_weights(capsys, torch_home, tmp_path):
    from visionfit.data.registry import SplitShares, load_data
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.run import run_doctor

    weights_file, state = fake_resnet18_file(torch_home)
    root = make_folder_dataset(tmp_path / "fruit", per_class=6, split=True)
    before = tree_digest(root)
    data = load_data(None, str(root), shares=SplitShares(0.1, seed=0))
    report = run_doctor(data, DoctorOptions(output=tmp_path / "report", folds=2, device="cpu"))
    summary = report.summary
    assert summary["features"] == {
        "source": "pretrained",
        "model": "resnet18",
        "weights": "ResNet18_Weights.IMAGENET1K_V1",
        "file": str(weights_file),
    }
    assert "pretrained weights ResNet18_Weights.IMAGENET1K_V1" in summary["probabilities"]
    assert "out-of-sample" in summary["probabilities"]
    assert summary["kinds"]["label_issue"]["ran"] and summary["kinds"]["outlier"]["ran"]
    assert not (tmp_path / "report" / "folds").exists()  # no quick model was trained
    assert tree_digest(root) == before
    # The features are resnet18's with these weights, fed as the weights expect.
    features = report.evidence.features
    assert features is not None and features.shape == (len(report.evidence.collection), 512)
    item = 4
    expected = torchvision_features(state, report.evidence.collection.paths[item])
    cosine = features[item] @ expected / np.linalg.norm(features[item]) / np.linalg.norm(expected)
    assert cosine > 0.99, cosine
    # The same pictures and weights again: from the cache. New weights in the file: computed again.
    arguments = ["--data-dir", str(root), "--folds", "2", "--device", "cpu", "--out", str(tmp_path / "r2")]
    code, out, err = run_doctor_cli(capsys, *arguments)
    assert code == 0 and "from the cache" in out, err
    torch.manual_seed(4)
    torch.save(
        {key: value + 0.01 if value.is_floating_point() else value for key, value in state.items()},
        weights_file,
    )
    code, out, err = run_doctor_cli(capsys, *arguments)
    assert code == 0 and "from the cache" not in out and "features from torchvision resnet18" in out, out


def test_pretrained_weights_are_downloaded_only_when_named(capsys, torch_home, tmp_path):
    root = make_folder_dataset(tmp_path / "fruit", per_class=4, split=True)
    arguments = ["--data-dir", str(root), "--folds", "2", "--epochs", "1", "--device", "cpu"]
    # Nothing in torch's cache and nothing named: the quick models, no download tried.
    code, _, err = run_doctor_cli(capsys, *arguments, "--out", str(tmp_path / "r1"))
    assert code == 0, err
    summary = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert summary["features"] == {"source": "quick", "model": "airnet", "epochs": 1}
    # Named: torchvision downloads them (here it cannot), and the error says how to go on offline.
    code, _, err = run_doctor_cli(
        capsys, *arguments, "--pretrained", "resnet18", "--out", str(tmp_path / "r2")
    )
    assert code == 2 and "cannot download the pretrained weights of resnet18" in err
    code, _, err = run_doctor_cli(capsys, *arguments, "--weights", "w.pth", "--out", str(tmp_path / "r3"))
    assert code == 2 and "--weights FILE is the weights of --pretrained NAME" in err
    code, _, err = run_doctor_cli(capsys, *arguments, "--pretrained", "cifar10-quick")
    assert code == 2 and "not a torchvision model" in err
