"""visionfit.load / Predictor: preprocessing from the checkpoint alone, equal to training's eval
transform; every image mode; paths, PIL images and tensors; input expansion."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import visionfit
from conftest import make_image
from visionfit.data.augment import Normalize
from visionfit.data.images import open_rgb
from visionfit.data.transforms import PictureReader, Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.errors import UserError
from visionfit.models import ModelRecord, create_model
from visionfit.prediction import STDIN, expand_inputs, picture_pixels, prediction_record, stack_pixels

CLASSES = ["apple", "grape", "lime"]


def write_checkpoint(path, preprocess, seed=0):
    torch.manual_seed(seed)
    model = create_model("cifar10-quick", len(CLASSES))
    metadata = checkpoint_metadata(ModelRecord("cifar10-quick", len(CLASSES)), CLASSES, preprocess)
    save_checkpoint(path, model.state_dict(), metadata)
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path):
    preprocess = Preprocess(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    model = write_checkpoint(tmp_path / "model.safetensors", preprocess)
    return tmp_path / "model.safetensors", model, preprocess


def eval_input(preprocess, image):
    """Training's evaluation transform: the per-picture resize, then the batch normalisation."""
    return Normalize(preprocess, torch.device("cpu"))(PictureReader(preprocess)(image).unsqueeze(0))


def expected_probabilities(model, preprocess, image):
    with torch.no_grad():
        return torch.softmax(model(eval_input(preprocess, image)), dim=1)[0]


def test_predictor_uses_exactly_the_checkpoints_eval_transform(checkpoint, tmp_path):
    path, model, preprocess = checkpoint
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    assert predictor.preprocess == preprocess and predictor.classes == CLASSES
    images = []
    for index, size in enumerate([(32, 32), (50, 40), (17, 61)]):
        make_image(tmp_path / f"{index}.png", (200, 40, 90), size=size, seed=index)
        images.append(tmp_path / f"{index}.png")
    pixels = stack_pixels([picture_pixels(image, preprocess) for image in images])
    reference = torch.stack([PictureReader(preprocess)(open_rgb(image)) for image in images])
    assert torch.equal(pixels, reference)  # bit for bit, as training's loader reads them
    for image, top in zip(images, predictor.predict(images, top_k=3), strict=True):
        probabilities = expected_probabilities(model, preprocess, open_rgb(image))
        assert [name for name, _ in top] == [CLASSES[i] for i in probabilities.argsort(descending=True)]
        assert top[0][1] == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_precision_auto_follows_the_cpu_and_bf16_stays_close_to_fp32(checkpoint, tmp_path, monkeypatch):
    import visionfit.runtime as runtime_module

    path, model, _ = checkpoint
    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: False)
    assert visionfit.load(path, device="cpu").model.runtime.precision == "fp32"
    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: True)
    predictor = visionfit.load(path, device="cpu")
    assert predictor.model.runtime.precision == "bf16"
    images = []
    for index in range(6):
        make_image(tmp_path / f"{index}.png", (40 * index, 200 - 30 * index, 90), size=(32, 32), seed=index)
        images.append(tmp_path / f"{index}.png")
    pixels = stack_pixels([picture_pixels(image, predictor.preprocess) for image in images])
    reference = torch.softmax(model(Normalize(predictor.preprocess, torch.device("cpu"))(pixels)), dim=1)
    approximate = predictor.model.probabilities(pixels)
    assert not torch.equal(approximate, reference)  # really computed in bf16 ...
    torch.testing.assert_close(approximate, reference, atol=0.02, rtol=0)  # ... and close to fp32


def test_squash_preprocessing_from_the_checkpoint(tmp_path):
    preprocess = Preprocess(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_mode="squash")
    model = write_checkpoint(tmp_path / "m.safetensors", preprocess, seed=3)
    make_image(tmp_path / "wide.png", (30, 200, 30), size=(90, 20))
    predictor = visionfit.load(tmp_path / "m.safetensors", device="cpu", precision="fp32")
    resized = picture_pixels(tmp_path / "wide.png", preprocess)
    assert resized.shape == (3, 32, 32)  # squashed, not cropped
    expected = expected_probabilities(model, preprocess, open_rgb(tmp_path / "wide.png"))
    assert predictor.predict(tmp_path / "wide.png")[0][0][1] == pytest.approx(float(expected.max()), abs=1e-6)


@pytest.mark.parametrize(
    ("mode", "color", "extension"),
    [
        ("RGBA", (10, 200, 30, 128), ".png"),
        ("P", 7, ".png"),
        ("L", 90, ".png"),
        ("LA", (90, 40), ".png"),
        ("I;16", 40000, ".png"),
        ("CMYK", (0, 255, 255, 0), ".jpg"),
        ("1", 1, ".bmp"),
    ],
)
def test_every_image_mode_predicts_like_training_reads_it(checkpoint, tmp_path, mode, color, extension):
    path, _, preprocess = checkpoint
    file = tmp_path / f"picture{extension}"
    Image.new(mode, (40, 36), color).save(file)
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    expected = PictureReader(preprocess)(open_rgb(file))
    assert torch.equal(picture_pixels(file, predictor.preprocess), expected)
    with Image.open(file) as opened:  # a PIL image of that mode, passed directly, gives the same input
        assert torch.equal(picture_pixels(opened, predictor.preprocess), expected)


def test_exif_orientation_is_applied_to_files_and_pil_images(checkpoint, tmp_path):
    path, _, preprocess = checkpoint
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (250, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    file = tmp_path / "rotated.jpg"
    image.save(file, exif=exif, quality=100)
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    expected = PictureReader(preprocess)(open_rgb(file))
    assert open_rgb(file).size == (20, 40)
    with Image.open(file) as opened:
        assert torch.equal(picture_pixels(opened, predictor.preprocess), expected)


def test_tensors_uint8_and_float_give_the_same_prediction(checkpoint, tmp_path):
    path, *_ = checkpoint
    make_image(tmp_path / "a.png", (120, 40, 160), size=(32, 32))
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    uint8 = torch.from_numpy(np.array(open_rgb(tmp_path / "a.png"))).permute(2, 0, 1).contiguous()
    from_path = predictor.predict(tmp_path / "a.png", top_k=2)
    from_uint8 = predictor.predict(uint8, top_k=2)
    from_float = predictor.predict([uint8.float() / 255], top_k=2)
    assert from_path == from_uint8
    assert [name for name, _ in from_float[0]] == [name for name, _ in from_path[0]]
    assert from_float[0][0][1] == pytest.approx(from_path[0][0][1], abs=1e-5)
    with pytest.raises(UserError, match="shape"):
        predictor.predict(torch.zeros(32, 32))


def test_predict_sources_reports_unreadable_files_and_predicts_the_rest(checkpoint, tmp_path):
    path, *_ = checkpoint
    make_image(tmp_path / "good.png", (220, 30, 30))
    (tmp_path / "text.jpg").write_text("not an image")
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    sources = [str(tmp_path / "good.png"), str(tmp_path / "text.jpg"), str(tmp_path / "missing.png")]
    rows = list(predictor.predict_sources(sources, top_k=2, batch_size=2))
    assert [row.source for row in rows] == sources
    assert rows[0].error is None and len(rows[0].top) == 2
    assert "not a readable image" in rows[1].error and rows[1].top == []
    assert rows[2].error == "no such file"
    assert prediction_record(rows[1]) == {"file": sources[1], "error": rows[1].error}


def test_stdin_is_read_as_one_image(checkpoint, tmp_path, monkeypatch):
    path, *_ = checkpoint
    make_image(tmp_path / "a.png", (40, 200, 60))
    buffer = io.BytesIO((tmp_path / "a.png").read_bytes())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(buffer))
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    (row,) = predictor.predict_sources([STDIN])
    assert row.top == predictor.predict(tmp_path / "a.png")[0]


def test_a_binary_stream_is_one_image_not_its_lines(checkpoint, tmp_path):
    """Predictor.predict(stream) once iterated the stream line by line, as if each line were an image."""
    path, *_ = checkpoint
    make_image(tmp_path / "a.png", (40, 200, 60), size=(64, 48))
    predictor = visionfit.load(path, device="cpu", precision="fp32")
    with open(tmp_path / "a.png", "rb") as stream:
        result = predictor.predict(stream, top_k=2)
    assert result == predictor.predict(tmp_path / "a.png", top_k=2)
    assert predictor.predict(io.BytesIO((tmp_path / "a.png").read_bytes()), top_k=2) == result


@pytest.mark.parametrize(("device_type", "channels_last"), [("cpu", True), ("mps", False)])
def test_the_predictor_takes_the_runtimes_layout(checkpoint, monkeypatch, device_type, channels_last):
    """The predictor once forced channels_last (and built a second Runtime) whatever the device."""
    import visionfit.inference.loading as inference
    from visionfit.runtime import Runtime

    path, *_ = checkpoint
    chosen = Runtime(torch.device("cpu"), channels_last=channels_last)
    monkeypatch.setattr(inference, "create_runtime", lambda *arguments: chosen)
    predictor = visionfit.load(path, device=device_type, precision="fp32")
    assert predictor.model.runtime is chosen
    weight = next(parameter for parameter in predictor.model.network.parameters() if parameter.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert predictor.model.runtime.channels_last is channels_last


def test_expand_inputs_walks_folders_and_globs_in_order(tmp_path):
    for name in ["b/2.png", "b/1.jpg", "b/deep/3.png", "b/.hidden/4.png", "b/notes.txt", "c.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([str(tmp_path / "c.png"), str(tmp_path / "b"), "-"])
    assert found == [
        str(tmp_path / "c.png"),
        str(tmp_path / "b" / "1.jpg"),
        str(tmp_path / "b" / "2.png"),
        str(tmp_path / "b" / "deep" / "3.png"),
        "-",
    ]
    assert expand_inputs([str(tmp_path / "b" / "*.png")]) == [str(tmp_path / "b" / "2.png")]
    with pytest.raises(UserError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        expand_inputs([str(tmp_path / "empty")])
