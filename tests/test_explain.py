"""`visionfit explain` and Grad-CAM: the layer per model family, the command's files and refusals,
and a sanity check (Adebayo et al., 2018): a trained model's maps differ from those of the same
network with random weights, and they follow the class they explain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("pytorch_grad_cam")

from serve_support import image_bytes
from visionfit.cli import main
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.errors import UserError
from visionfit.explaining import Explainer, target_layer
from visionfit.inference import load_for_inference
from visionfit.models import ModelRecord, create_model

COLORS = {"blue": (20, 40, 230), "green": (20, 200, 20), "red": (230, 20, 20)}  # as folders sort
CLASSES = list(COLORS)
PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
SQUARE = 10


@pytest.mark.parametrize(
    ("name", "layer"),
    [("airnet", "groups.2"), ("cifar10-quick", "4"), ("resnet18", "layer4"), ("vgg11", "features.18")],
)
def test_the_layer_is_chosen_per_family(name, layer):
    assert target_layer(create_model(name, 3), name) == layer


def test_a_transformer_is_refused_and_layer_overrides():
    with pytest.raises(UserError, match="vision transformer.*--layer"):
        target_layer(create_model("vit_b_16", 3), "vit_b_16")
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())
    assert target_layer(network, "mine.py:Net") == "2"  # a user's module: its last convolution
    assert target_layer(network, "mine.py:Net", "0") == "0"
    with pytest.raises(UserError, match="--layer nope: no such layer"):
        target_layer(network, "mine.py:Net", "nope")


def scenes(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey noise with one coloured square somewhere; the class is the square's colour."""
    images = (128 + torch.randn(count, 3, 32, 32, generator=generator) * 30).clamp(0, 255)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    for index in range(count):
        top, left = torch.randint(0, 32 - SQUARE, (2,), generator=generator).tolist()
        color = torch.tensor(COLORS[CLASSES[int(labels[index])]], dtype=torch.float32).view(3, 1, 1)
        images[index, :, top : top + SQUARE, left : left + SQUARE] = color
    return images.to(torch.uint8), labels


def save(model: nn.Module, path: Path) -> Path:
    metadata = checkpoint_metadata(ModelRecord("airnet", len(CLASSES), {"width": 8}), CLASSES, PREPROCESS)
    save_checkpoint(path, model.state_dict(), metadata)
    return path


def randomised(model: nn.Module) -> nn.Module:
    """The same network with every convolution's and linear layer's weights redrawn from a normal
    distribution of their trained spread (Adebayo et al.'s full randomisation)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0, float(module.weight.std()))
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """airnet (width 8) trained to name the colour of a square, and the same network randomised."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = create_model("airnet", len(CLASSES), width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    mean, std = torch.tensor(PREPROCESS.mean).view(1, 3, 1, 1), torch.tensor(PREPROCESS.std).view(1, 3, 1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and far faster on a busy machine
    try:
        model.train()
        for _ in range(15):
            images, labels = scenes(32, generator)
            loss = nn.functional.cross_entropy(model((images / 255 - mean) / std), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    images, labels = scenes(64, generator)
    model.eval()
    with torch.no_grad():
        accuracy = (model((images / 255 - mean) / std).argmax(dim=1) == labels).float().mean()
    assert accuracy > 0.9  # the sanity check means something only for a model that learned
    trained = save(model, root / "trained.safetensors")
    return trained, save(randomised(model), root / "random.safetensors"), root


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps' pixels."""
    ranks = [values.flatten().argsort().argsort().double() for values in (first, second)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def test_maps_of_trained_weights_differ_from_random_weights_and_follow_the_class(trained):
    trained_path, random_path, _ = trained
    explainers = [
        Explainer(load_for_inference(path, device="cpu", precision="fp32"))
        for path in (trained_path, random_path)
    ]
    # Two squares: red at the top left, blue at the bottom right.
    image = (128 + torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 30).clamp(0, 255)
    image[0, :, 2 : 2 + SQUARE, 2 : 2 + SQUARE] = torch.tensor(COLORS["red"], dtype=torch.float32).view(
        3, 1, 1
    )
    image[0, :, 20 : 20 + SQUARE, 20 : 20 + SQUARE] = torch.tensor(COLORS["blue"], dtype=torch.float32).view(
        3, 1, 1
    )
    image = image.to(torch.uint8)
    red, blue = (explainers[0].explain(image, CLASSES.index(name)).maps[0] for name in ("red", "blue"))
    assert red[:16, :16].sum() > 2 * red[16:, 16:].sum()  # the red map looks at the red square
    assert blue[16:, 16:].sum() > 2 * blue[:16, :16].sum()  # and the blue map at the blue one
    assert rank_correlation(red, blue) < 0.5
    scenes_, _ = scenes(8, torch.Generator().manual_seed(9))
    trained_maps = explainers[0].explain(scenes_).maps
    random_maps = explainers[1].explain(scenes_).maps
    correlations = [rank_correlation(a, b) for a, b in zip(trained_maps, random_maps, strict=True)]
    assert sum(correlations) / len(correlations) < 0.5


def test_explain_writes_an_overlay_per_picture_and_refuses_an_export(trained, tmp_path, capsys):
    checkpoint, _, _ = trained
    for index in range(2):
        (tmp_path / f"photo{index}.png").write_bytes(image_bytes("PNG", (48, 40), index))
    (tmp_path / "notes.png").write_bytes(b"not an image")
    out = tmp_path / "maps"
    code = main(
        ["explain", str(checkpoint), str(tmp_path), "--out", str(out), "--class", "green", "--device", "cpu"]
    )
    captured = capsys.readouterr()
    assert code == 1 and "1 of 3 input(s) could not be read" in captured.err
    assert sorted(path.name for path in out.iterdir()) == ["photo0.cam.png", "photo1.cam.png"]
    assert Image.open(out / "photo0.cam.png").size == (224, 224)
    assert "gradcam on layer groups.2" in captured.out and captured.out.count("map of green") == 2
    assert main(["explain", str(checkpoint), str(tmp_path / "photo0.png"), "--class", "pink"]) == 2
    assert "--class pink: not one of the model's classes" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "model.onnx"), str(tmp_path / "photo0.png")]) == 2
    assert "explanations need the checkpoint" in capsys.readouterr().err


def test_serve_explain_answers_like_predict_with_an_overlay_and_an_export_says_why_not(trained, tmp_path):
    pytest.importorskip("fastapi")
    import base64
    import io

    from fastapi.testclient import TestClient

    from visionfit.export import export_onnx
    from visionfit.serve.app import create_app

    checkpoint, _, _ = trained
    model = load_for_inference(checkpoint, device="cpu", precision="fp32", model_code="refuse")
    files = [
        ("files", (f"{index}.png", image_bytes("PNG", (40, 30), index), "image/png")) for index in range(2)
    ]
    with TestClient(create_app(model, api_key="secret")) as client:
        headers = {"Authorization": "Bearer secret"}
        assert client.post("/explain", files=files).status_code == 401  # the same key as /predict
        predicted = client.post("/predict?top_k=2", files=files, headers=headers).json()
        explained = client.post("/explain?top_k=2", files=files, headers=headers).json()
        for plain, record in zip(predicted, explained, strict=True):
            assert [item["class"] for item in record["top"]] == [item["class"] for item in plain["top"]]
            for ours, theirs in zip(record["top"], plain["top"], strict=True):
                assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
            assert record["explained"] == record["class"]
            prefix = "data:image/png;base64,"
            assert record["overlay"].startswith(prefix)
            assert Image.open(io.BytesIO(base64.b64decode(record["overlay"][len(prefix) :]))).size == (
                224,
                224,
            )
        chosen = client.post("/explain?class=blue", files=files[:1], headers=headers).json()
        assert chosen[0]["explained"] == "blue"
        wrong = client.post("/explain?class=pink", files=files[:1], headers=headers)
        assert wrong.status_code == 422 and "pink" in wrong.json()["error"]
    export = export_onnx(checkpoint, tmp_path / "model.onnx")
    with TestClient(create_app(load_for_inference(export.path, device="cpu"))) as client:
        refused = client.post("/explain", files=files[:1])
        assert refused.status_code == 501 and "explanations need the checkpoint" in refused.json()["error"]
        assert client.post("/predict", files=files[:1]).status_code == 200


def test_eval_draws_where_the_model_looked_for_its_worst_mistakes(trained, tmp_path):
    checkpoint, _, _ = trained
    generator = torch.Generator().manual_seed(3)
    images, labels = scenes(12, generator)
    labels = (labels + 1) % len(CLASSES)  # every label wrong: the model's answers are all mistakes
    for index in range(12):
        folder = tmp_path / "data" / CLASSES[int(labels[index])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(folder / f"{index}.png")
    out = tmp_path / "report"
    arguments = ["eval", str(checkpoint), "--data-dir", str(tmp_path / "data"), "--split", "train"]
    assert main([*arguments, "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "mistakes_cam.png").is_file() and Image.open(out / "mistakes_cam.png").size[1] > 1000
