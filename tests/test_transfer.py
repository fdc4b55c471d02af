"""Transfer learning offline: local weights files (random tensors in the exact state-dict shape),
torchvision's download path and cache without network, frozen backbones, and the preprocessing
that follows the weights."""

from __future__ import annotations

import dataclasses
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.models import get_model, get_model_weights

from visionfit.cli import main
from visionfit.config import build_config
from visionfit.data.augment import Normalize
from visionfit.data.transforms import PictureReader
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.errors import UserError
from visionfit.models import create_model
from visionfit.models.torchvision_zoo import weights_layout_args
from visionfit.serialization import load_model
from visionfit.training import resolve_preprocess


@pytest.fixture(autouse=True)
def _torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchvision's cache in a temporary folder, and no network: any download attempt fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return tmp_path / "torch_home"


def random_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """What torchvision's weights file for `name` holds, with random values in every tensor."""
    torch.manual_seed(1)
    weights = get_model_weights(name).DEFAULT
    model = get_model(name, weights=None, **weights_layout_args(name, weights))
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5  # a variance: positive
        elif value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.05
        else:
            state[key] = value + 7  # BatchNorm's num_batches_tracked: a recognisable count
    return state


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return random_pretrained_state("resnet18")


@pytest.fixture
def resnet18_file(resnet18_state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    path = tmp_path / "resnet18-imagenet.safetensors"
    save_file(resnet18_state, str(path))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_backbone_arrives_unchanged_and_the_head_has_n_outputs(resnet18_state, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(resnet18_state, path)
    else:
        save_file(resnet18_state, str(path))
    model = create_model("resnet18", 3, weights=str(path))
    state = model.state_dict()
    for key, value in resnet18_state.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (3, 512)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)

    appended = create_model("resnet18", 3, weights=str(path), head="append").state_dict()
    assert torch.equal(appended["fc.0.weight"], resnet18_state["fc.weight"])  # ImageNet head kept
    assert appended["fc.1.weight"].shape == (3, 1000)


def test_weights_of_a_model_with_aux_heads_load_the_way_torchvision_builds_it(tmp_path):
    state = random_pretrained_state("googlenet")
    assert any(key.startswith("aux1.") for key in state)
    path = tmp_path / "googlenet.safetensors"
    save_file(state, str(path))
    model = create_model("googlenet", 2, weights=str(path))
    assert model.transform_input and model.aux1 is None  # as torchvision's pretrained googlenet
    assert torch.equal(model.state_dict()["conv1.conv.weight"], state["conv1.conv.weight"])
    model.train()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_from_scratch_batchnorm_statistics_follow_the_batches(tmp_path):
    from visionfit.models.record import StartingWeights, create_training_model

    def momenta(model: torch.nn.Module) -> set[float]:
        return {module.momentum for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)}

    torch.manual_seed(0)
    scratch = create_training_model("mobilenet_v3_small", 3, {})
    assert momenta(scratch) == {0.1}  # torchvision builds it with 0.01
    # eight different pictures: each its own brightness and contrast
    images = torch.rand(8, 3, 64, 64) * torch.linspace(0.2, 1.0, 8).view(8, 1, 1, 1)
    images = images + torch.linspace(0.0, 0.5, 8).flip(0).view(8, 1, 1, 1)
    with torch.no_grad():
        for _ in range(60):  # sixty training steps' worth of statistics
            trained = scratch.train()(images)
        tested = scratch.eval()(images)
    # how much the eval-mode logits tell the pictures apart, against the training-mode logits:
    # about 0.1 here; with torchvision's 0.01 the statistics still hold most of their initial
    # values and every picture gets the same logits (about 5e-8)
    assert float(tested.std(dim=0).mean() / trained.std(dim=0).mean()) > 0.01

    path = tmp_path / "mobilenet.safetensors"
    save_file(random_pretrained_state("mobilenet_v3_small"), str(path))
    pretrained = create_training_model("mobilenet_v3_small", 3, {}, start=StartingWeights(file=str(path)))
    assert momenta(pretrained) == {0.01}  # already-right statistics keep torchvision's momentum


def test_weights_that_do_not_fit_are_a_one_line_error(resnet18_file, tmp_path):
    with pytest.raises(UserError, match="do not fit resnet34"):
        create_model("resnet34", 3, weights=str(resnet18_file))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="not a readable weights file"):
        create_model("resnet18", 3, weights=str(junk))
    with pytest.raises(UserError, match="no such file"):
        create_model("resnet18", 3, weights=str(tmp_path / "missing.pth"))


def test_pretrained_offline_is_one_line_naming_weights_file(capsys, folder_dataset, tmp_path, _torch_home):
    code = main(
        [
            *["train", "--dataset", "folder", "--data-dir", str(folder_dataset), "--model", "resnet18"],
            *["--pretrained", "--run-dir", str(tmp_path / "runs")],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot download the pretrained weights of resnet18" in err and "--weights FILE" in err
    assert str(_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err


def test_pretrained_comes_from_torchvisions_cache_under_torch_home(resnet18_state, _torch_home):
    url = get_model_weights("resnet18").DEFAULT.url
    cached = _torch_home / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(resnet18_state, cached)
    model = create_model("resnet18", 4, pretrained=True)  # no network: served from the cache
    assert torch.equal(model.state_dict()["conv1.weight"], resnet18_state["conv1.weight"])


def build_eval_transform(preprocess):
    """Training's evaluation transform: the per-picture resize, then the batch normalisation."""
    reader, normalize = PictureReader(preprocess), Normalize(preprocess, torch.device("cpu"))
    return lambda image: normalize(reader(image).unsqueeze(0))[0]


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18", "swin_t"])
def test_transforms_follow_the_weights_preprocessing(name):
    preprocess = resolve_preprocess(build_config(flag_values={"model": name}))
    ours = build_eval_transform(preprocess)
    theirs = get_model_weights(name).DEFAULT.transforms()
    torch.manual_seed(0)  # a smooth picture: random colours over a 10x12 grid, interpolated
    coarse = torch.rand(1, 3, 10, 12) * 255
    image = (
        torch.nn.functional.interpolate(coarse, size=(300, 370), mode="bilinear")[0].round().to(torch.uint8)
    )
    expected = theirs(image)
    # equal up to one uint8 rounding step here and there (v1 and v2 round resizes differently)
    assert (ours(image) - expected).abs().max() <= 1.01 / 255 / min(preprocess.std)
    if preprocess.interpolation != "bilinear":  # and the interpolation matters at that precision
        bilinear = build_eval_transform(dataclasses.replace(preprocess, interpolation="bilinear"))
        assert (bilinear(image) - expected).abs().max() > 2 / 255 / max(preprocess.std)
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    assert ours(picture).shape == theirs(picture).shape == (3, 224, 224)


def test_frozen_backbone_then_unfreeze_from_the_cli(
    capsys, folder_dataset, resnet18_file, resnet18_state, tmp_path
):
    code = main(
        [
            *["train", "--dataset", "folder", "--data-dir", str(folder_dataset), "--model", "resnet18"],
            *["--weights", str(resnet18_file), "--freeze", "backbone", "--unfreeze-at", "2", "--epochs", "2"],
            *["--input-size", "32", "--batch-size", "4", "--workers", "0", "--keep-every-epoch"],
            *["--backbone-lr-scale", "0.1", "--run-dir", str(tmp_path / "runs"), "--name", "transfer"],
            "--no-tensorboard",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "unfreezing the backbone" in captured.err + captured.out
    checkpoints = tmp_path / "runs" / "transfer" / "checkpoints"
    first = load_checkpoint(checkpoints / "epoch_001.safetensors")
    second = load_checkpoint(checkpoints / "epoch_002.safetensors")
    backbone = [key for key in resnet18_state if not key.startswith("fc.")]
    # epoch 1: weights, BatchNorm statistics and counters all exactly as loaded
    assert all(torch.equal(first.model_state[key], resnet18_state[key]) for key in backbone)
    assert not all(torch.equal(second.model_state[key], resnet18_state[key]) for key in backbone)
    record = first.metadata["model"]
    assert record["name"] == "resnet18" and record["head"] == "replace" and record["pretrained_layout"]
    assert record["pretrained"] == str(resnet18_file)
    assert first.metadata["preprocess"]["crop_fraction"] == pytest.approx(224 / 256)
    model = load_model(checkpoints / "epoch_002.safetensors")  # rebuilt without the weights file
    assert model.fc.out_features == 3
    assert torch.equal(model.state_dict()["conv1.weight"], second.model_state["conv1.weight"])


def test_bad_freezing_options_are_user_errors():
    with pytest.raises(UserError, match="--unfreeze-at needs --freeze backbone"):
        build_config(flag_values={"unfreeze_at": 2})
    with pytest.raises(UserError, match="--backbone-lr-scale must be a positive"):
        build_config(flag_values={"backbone_lr_scale": 0})


def test_a_resumed_run_puts_the_freezing_back_for_its_epoch(tmp_path, monkeypatch):
    import visionfit.engine.epochs as epochs
    from test_resume import final_state, interrupt_after, make_noisy_dataset, settings
    from visionfit.training import train

    data = make_noisy_dataset(tmp_path / "data", per_class=5)
    extra = {"model": "mobilenet_v3_small", "input_size": 32, "freeze": "backbone", "unfreeze_at": 2}
    extra.update(epochs=2, tensorboard=False)
    reference = train(**settings(data, tmp_path / "reference", **extra)).run_dir

    real_steps = epochs.train_steps
    interrupt_after(monkeypatch, 1)  # killed inside epoch 1, while the backbone is frozen
    with pytest.raises(KeyboardInterrupt):
        train(**settings(data, tmp_path / "runs", name="run", **extra))
    monkeypatch.setattr(epochs, "train_steps", real_steps)
    resumed = train(resume=tmp_path / "runs" / "run").run_dir
    expected, actual = final_state(reference), final_state(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_the_transfer_recipe_fine_tunes_from_a_weights_file(capsys, folder_dataset, resnet18_file, tmp_path):
    """Offline, --weights stands in for the download; the first epoch trains the head on the frozen
    backbone's features, then everything trains, with the recipe's augmentation and averaging."""
    command = ["train", "--recipe", "transfer", "--dataset", "folder", "--data-dir", str(folder_dataset)]
    command += ["--weights", str(resnet18_file), "--input-size", "32", "--epochs", "2", "--workers", "0"]
    assert main([*command, "--run-dir", str(tmp_path), "--name", "t", "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "computing the frozen backbone's features" in out and "unfreezing the backbone" in out
    config = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.safetensors").metadata["config"]
    assert (
        config["recipe"] == "transfer" and config["ema"] == 0.999 and config["auto_augment"] == "trivialwide"
    )
    assert config["freeze"] == "backbone" and config["backbone_lr_scale"] == 0.1


def test_the_scratch_recipe_trains_a_zoo_model_from_random_weights(folder_dataset, tmp_path):
    command = ["train", "--recipe", "scratch", "--dataset", "folder", "--data-dir", str(folder_dataset)]
    command += ["--model", "shufflenet_v2_x0_5", "--input-size", "32", "--epochs", "2", "--workers", "0"]
    assert main([*command, "--run-dir", str(tmp_path), "--name", "s", "--no-tensorboard"]) == 0
    config = load_checkpoint(tmp_path / "s" / "checkpoints" / "last.safetensors").metadata["config"]
    assert not config["pretrained"] and config["low_res_epochs"] == 10 and config["random_erasing"] == 0.25


def test_recipes_are_one_line_each(capsys):
    from visionfit.recipes import RECIPES

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[: len(RECIPES)]] == list(RECIPES)
    assert main(["recipes", "transfer"]) == 0
    assert "  --backbone-lr-scale 0.1" in capsys.readouterr().out
    assert main(["recipes", "nope"]) == 2
