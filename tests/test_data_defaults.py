"""Defaults that follow the data: with no model or recipe named, small pictures get the fast recipe
and photos transfer or scratch, said in one line; CIFAR-10, a named model, recipe or dataset keep
today's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

import visionfit.config.defaults as defaults
from conftest import make_image
from visionfit.config import build_config


def picture_folder(root: Path, size: tuple[int, int]) -> Path:
    for name, color in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        for index in range(3):
            make_image(root / name / f"{index}.jpg", color, size=size, seed=index)
    return root


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(defaults.logger, "info", lines.append)
    return lines


@pytest.mark.parametrize(
    ("reachable", "recipe"), [(True, "transfer"), (False, "scratch")], ids=["weights", "no-weights"]
)
def test_photos_get_transfer_when_weights_exist_else_scratch(tmp_path, monkeypatch, said, reachable, recipe):
    monkeypatch.setattr(defaults, "pretrained_weights_reachable", lambda: (reachable, "because"))
    config = build_config(flag_values={"data_dir": str(picture_folder(tmp_path / "photos", (400, 300)))})
    assert config.recipe == recipe and config.model == "resnet18" and config.input_size == 224
    assert len(said) == 1 and said[0].startswith("no model or recipe named: the pictures are photos (400x300")
    assert f"--recipe {recipe} (resnet18) at --input-size 224: because" in said[0]


def test_smaller_photos_get_a_smaller_input_and_flags_still_win(tmp_path, monkeypatch, said):
    monkeypatch.setattr(defaults, "pretrained_weights_reachable", lambda: (False, "offline"))
    data = str(picture_folder(tmp_path / "photos", (150, 130)))
    assert build_config(flag_values={"data_dir": data}).input_size == 128
    assert build_config(flag_values={"data_dir": data, "input_size": 64}).input_size == 64
    assert build_config(flag_values={"data_dir": data, "epochs": 3}).epochs == 3


def test_small_pictures_get_the_fast_recipe(tmp_path, said):
    config = build_config(flag_values={"data_dir": str(picture_folder(tmp_path / "small", (32, 32)))})
    assert config.recipe == "fast" and config.model == "airnet" and config.input_size is None
    assert said[0].startswith("no model or recipe named: the pictures are small (32x32 px typical")
    assert "--recipe tutorial" in said[0]
    bigger = build_config(flag_values={"data_dir": str(picture_folder(tmp_path / "bigger", (60, 50)))})
    assert bigger.recipe == "fast" and bigger.input_size == 48


def test_label_files_follow_their_pictures(tmp_path, monkeypatch, said):
    monkeypatch.setattr(defaults, "pretrained_weights_reachable", lambda: (False, "offline"))
    photos = picture_folder(tmp_path / "photos", (400, 300))
    labels = photos / "labels.csv"
    labels.write_text("file,labels\nred/0.jpg,red;warm\nblue/0.jpg,blue\n")
    assert build_config(flag_values={"labels": str(labels)}).recipe == "scratch"  # beside the file
    assert build_config(flag_values={"labels": str(labels), "data_dir": str(photos)}).recipe == "scratch"
    assert len(said) == 2


def test_cifar_named_models_recipes_and_datasets_keep_todays_defaults(tmp_path, said):
    assert build_config().recipe == "fast"  # CIFAR-10, as before
    photos = str(picture_folder(tmp_path / "photos", (400, 300)))
    assert build_config(flag_values={"data_dir": photos, "model": "cifar10-quick"}).recipe is None
    assert build_config(flag_values={"data_dir": photos, "recipe": "tutorial"}).model == "cifar10-quick"
    named = build_config(flag_values={"data_dir": photos, "dataset": "folder"})
    assert named.recipe is None and named.model == "cifar10-quick"
    assert said == []


def test_weights_in_torch_hub_count_as_available(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"")
    reachable, why = defaults.pretrained_weights_reachable()
    assert reachable and str(tmp_path / "torch") in why
