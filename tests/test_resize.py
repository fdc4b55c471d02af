"""--resize crop|letterbox|squash: kept in the checkpoint and followed by predict, eval, export and serve."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from conftest import make_image
from visionfit.data.transforms import PictureReader, Preprocess, resize_picture
from visionfit.export.graph import resize_record
from visionfit.inference import load_for_inference
from visionfit.inference.onnx_runtime import preprocess_of
from visionfit.prediction import picture_pixels
from visionfit.training import train

MEAN = (0.5, 0.25, 0.75)


def wide_picture() -> torch.Tensor:
    """A 20 x 40 (H x W) picture of one colour."""
    return torch.full((3, 20, 40), 200, dtype=torch.uint8)


def test_letterbox_keeps_the_whole_picture_and_pads_with_the_mean_colour():
    preprocess = Preprocess(32, MEAN, (0.2, 0.2, 0.2), resize_mode="letterbox")
    boxed = resize_picture(wide_picture(), preprocess)
    assert boxed.shape == (3, 32, 32) and boxed.dtype == torch.uint8
    assert torch.all(boxed[:, 8:24, :] == 200)  # the picture, 16 x 32, centred
    bar = torch.tensor([128, 64, 191], dtype=torch.uint8)[:, None, None]  # round(mean x 255)
    assert torch.equal(boxed[:, :8, :], bar.expand(3, 8, 32)) and torch.equal(
        boxed[:, 24:, :], bar.expand(3, 8, 32)
    )
    cropped = resize_picture(wide_picture(), Preprocess(32, MEAN, (0.2, 0.2, 0.2), resize_mode="crop"))
    assert torch.all(cropped == 200)  # the centre square: no bars
    floats = resize_picture(wide_picture().float(), preprocess)
    assert floats.dtype == torch.float32 and floats[0, 0, 0] == 127.5


def test_training_crops_of_a_letterboxed_picture_keep_its_bars():
    preprocess = Preprocess(32, MEAN, (0.2, 0.2, 0.2), resize_mode="letterbox")
    reader = PictureReader(preprocess, random_crop=True)
    crops = [reader(wide_picture(), random.Random(seed)) for seed in range(20)]
    assert all(crop.shape == (3, 32, 32) for crop in crops)
    assert any(bool((crop[0] == 128).any()) for crop in crops)  # some crops reach into the bars


def test_an_export_records_and_restores_letterbox():
    preprocess = Preprocess(32, MEAN, (0.2, 0.2, 0.2), resize_mode="letterbox")
    metadata = {
        "input_size": 32,
        "resize": resize_record(preprocess),
        "normalization": {"mean": list(MEAN), "std": [0.2, 0.2, 0.2]},
    }
    assert "pad" in metadata["resize"]["how"]
    assert preprocess_of(metadata, Path("model.onnx")) == preprocess


@pytest.fixture(scope="module")
def letterboxed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch letterbox run on wide pictures: (data folder, best checkpoint)."""
    root = tmp_path_factory.mktemp("letterbox")
    for index in range(4):
        for name, color in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            make_image(root / "data" / name / f"{index}.png", color, size=(40, 20), seed=index)
    result = train(
        dataset="folder",
        data_dir=str(root / "data"),
        test_fraction=0.25,
        model="cifar10-quick",
        input_size=32,
        resize="letterbox",
        epochs=1,
        batch_size=2,
        workers=0,
        run_dir=str(root / "runs"),
    )
    return root / "data", result.best_checkpoint


def test_the_checkpoint_keeps_resize_and_prediction_follows_it(letterboxed):
    data, checkpoint = letterboxed
    model = load_for_inference(checkpoint)
    assert model.preprocess.resize_mode == "letterbox"
    pixels = picture_pixels(data / "red" / "0.png", model.preprocess)
    assert pixels.shape == (3, 32, 32) and torch.equal(pixels[:, 0, :], pixels[:, 0, :1].expand(3, 32))


def test_serve_answers_as_predict_does_on_a_letterboxed_model(letterboxed):
    from fastapi.testclient import TestClient

    from visionfit.serve.app import create_app

    data, checkpoint = letterboxed
    picture = data / "red" / "1.png"
    model = load_for_inference(checkpoint, device="cpu", precision="fp32")
    expected = model.probabilities(picture_pixels(picture, model.preprocess).unsqueeze(0))[0]
    with TestClient(create_app(model)) as client:
        answer = client.post("/predict", content=picture.read_bytes())
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()
    assert record["probability"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_an_export_of_a_letterboxed_model_resizes_as_the_checkpoint(letterboxed, tmp_path, capsys):
    from test_export import readme_snippet
    from visionfit.export import export_onnx

    data, checkpoint = letterboxed
    result = export_onnx(checkpoint, tmp_path / "model.onnx")
    exported = load_for_inference(result.path, device="cpu", precision="fp32")
    original = load_for_inference(checkpoint, device="cpu", precision="fp32")
    assert exported.preprocess == original.preprocess
    picture = data / "blue" / "2.png"
    pixels = picture_pixels(picture, original.preprocess)
    namespace: dict = {}
    code = (
        readme_snippet()
        .replace('"model.onnx"', repr(str(result.path)))
        .replace('"photo.jpg"', repr(str(picture)))
    )
    exec(compile(code, "README.md", "exec"), namespace)  # the README's plain-onnxruntime lines
    capsys.readouterr()
    difference = (torch.from_numpy(namespace["pixels"][0]) * 255 - pixels.float()).abs()
    assert difference.max() <= 1.0001 and (difference > 0.01).float().mean() < 0.05
    torch.testing.assert_close(
        exported.probabilities(pixels.unsqueeze(0)),
        original.probabilities(pixels.unsqueeze(0)),
        atol=1e-4,
        rtol=0,
    )
