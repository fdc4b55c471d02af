"""Calibration: ECE/MCE/NLL/Brier from sums, temperature scaling on a planted over-confident model
(NLL and ECE fall on held-out data, the argmax never moves), `visionfit calibrate`, and the same
calibrated probabilities from predict, serve and the ONNX export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_folder_dataset
from serve_support import image_bytes
from visionfit.calibrating import named_split
from visionfit.cli import main
from visionfit.data.registry import load_data
from visionfit.data.transforms import Preprocess
from visionfit.engine.calibration import CalibrationSums, calibration_report, fit_temperature
from visionfit.engine.checkpoint_file import checkpoint_metadata, load_checkpoint, save_checkpoint
from visionfit.errors import UserError
from visionfit.inference import load_for_inference
from visionfit.models import ModelRecord, create_model
from visionfit.models.heads import find_classifier

CLASSES = ["apple", "grape", "lime"]
PREPROCESS = Preprocess(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_metrics_match_hand_computed_values():
    # Two samples: one right at confidence e^2/(e^2+2) (bin 12), one wrong at 1/3 (bin 4).
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1])
    report = calibration_report(logits, targets)
    high = math.e**2 / (math.e**2 + 2)
    # [0, 0, 0]: every class ties at 1/3; argmax picks class 0, which is wrong for target 1.
    assert report["ece"] == pytest.approx(((1 - high) + 1 / 3) / 2)
    assert report["mce"] == pytest.approx(1 / 3)
    assert report["nll"] == pytest.approx((-math.log(high) + math.log(3)) / 2)
    brier_right = (1 - high) ** 2 + 2 * ((1 - high) / 2) ** 2
    brier_wrong = 2 * (1 / 3) ** 2 + (2 / 3) ** 2
    assert report["brier"] == pytest.approx((brier_right + brier_wrong) / 2)
    assert report["bins"]["count"][int(high * 15)] == 1 and report["bins"]["count"][4] == 1
    assert sum(report["bins"]["count"]) == 2


def test_sums_over_batches_equal_the_whole():
    generator = torch.Generator().manual_seed(0)
    logits, targets = (
        torch.randn(50, 4, generator=generator) * 3,
        torch.randint(0, 4, (50,), generator=generator),
    )
    sums = CalibrationSums()
    for start in range(0, 50, 7):
        sums.update(logits[start : start + 7], targets[start : start + 7])
    whole = calibration_report(logits, targets)
    parts = sums.report()
    for key in ("ece", "mce", "nll", "brier"):
        assert parts[key] == pytest.approx(whole[key])


def planted_logits(count: int, seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true distribution of the labels, multiplied by `scale`: a model
    `scale` times too sure of itself."""
    generator = torch.Generator().manual_seed(seed)
    honest = torch.randn(count, 5, generator=generator) * 1.5
    targets = torch.multinomial(torch.softmax(honest, dim=1), 1, generator=generator).flatten()
    return honest * scale, targets


def test_temperature_undoes_planted_over_confidence_on_held_out_data():
    validation, held_out = planted_logits(2000, 0, 4.0), planted_logits(2000, 1, 4.0)
    temperature = fit_temperature(*validation)
    assert temperature == pytest.approx(4.0, rel=0.1)
    before, after = calibration_report(*held_out), calibration_report(held_out[0] / temperature, held_out[1])
    assert after["nll"] < before["nll"] - 0.3 and after["ece"] < before["ece"] / 3 and after["ece"] < 0.03
    assert torch.equal((held_out[0] / temperature).argmax(dim=1), held_out[0].argmax(dim=1))


def test_a_calibrated_model_keeps_its_temperature_near_one():
    assert fit_temperature(*planted_logits(2000, 2, 1.0)) == pytest.approx(1.0, abs=0.1)


def overconfident_checkpoint(path: Path, data: Path | None = None) -> Path:
    """A cifar10-quick checkpoint whose head is multiplied by 40: random weights, certain answers."""
    torch.manual_seed(0)
    model = create_model("cifar10-quick", len(CLASSES))
    head = model.get_submodule(find_classifier(model, len(CLASSES)))
    with torch.no_grad():
        head.weight.mul_(40)
        head.bias.mul_(40)
    config = {"dataset": "folder", "data_dir": str(data), "val_fraction": 0.25, "seed": 0} if data else {}
    metadata = checkpoint_metadata(
        ModelRecord("cifar10-quick", len(CLASSES)), CLASSES, PREPROCESS, config=config, epoch=1
    )
    save_checkpoint(path, model.state_dict(), metadata)
    return path


def planted_dataset(root: Path, checkpoint: Path, count: int, seed: int) -> Path:
    """ROOT/<class>/*.png labelled so that the checkpoint's answer is right for 70% of the images
    and wrong (another class, at random) for the rest: a model that is 70% accurate and ~100% sure."""
    generator = torch.Generator().manual_seed(seed)
    model = load_for_inference(checkpoint, device="cpu", precision="fp32", calibrated=False)
    pixels = (torch.rand(count, 3, 1, 1, generator=generator) * 255).expand(-1, -1, 32, 32).to(torch.uint8)
    pixels = (pixels.float() + torch.randn(count, 3, 32, 32, generator=generator) * 20).clamp(0, 255)
    predicted = model.probabilities(pixels.to(torch.uint8)).argmax(dim=1)
    wrong = torch.rand(count, generator=generator) < 0.3
    other = (predicted + torch.randint(1, len(CLASSES), (count,), generator=generator)) % len(CLASSES)
    labels = torch.where(wrong, other, predicted)
    for index in range(count):
        folder = root / CLASSES[int(labels[index])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[index].to(torch.uint8).permute(1, 2, 0).numpy()).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The planted model calibrated on one planted folder (`fit`) with `visionfit calibrate`, and
    another (`held_out`) it never saw."""
    root = tmp_path_factory.mktemp("calibration")
    original = overconfident_checkpoint(root / "model.safetensors")
    fit = planted_dataset(root / "fit", original, 120, seed=1)
    held_out = planted_dataset(root / "held", original, 120, seed=2)
    calibrated = root / "calibrated.safetensors"
    arguments = ["calibrate", str(original), "--data-dir", str(fit), "--split", "train"]
    assert main([*arguments, "--out", str(calibrated), "--device", "cpu"]) == 0
    return original, calibrated, held_out, root


def test_calibrate_stores_the_temperature_and_eval_shows_ece_fall_with_accuracy_unchanged(calibrated, capsys):
    original, checkpoint, held_out, root = calibrated
    calibration = load_checkpoint(checkpoint).metadata["calibration"]
    assert calibration["temperature"] > 2 and calibration["nll_after"] < calibration["nll_before"]
    assert "train split" in calibration["fitted_on"] and calibration["count"] > 90
    assert "calibration" not in load_checkpoint(original).metadata  # --out leaves the original alone
    reports = {}
    for name, source in (("before", original), ("after", checkpoint)):
        out = root / f"eval-{name}"
        arguments = ["eval", str(source), "--data-dir", str(held_out), "--split", "train", "--out", str(out)]
        assert main([*arguments, "--device", "cpu", "--precision", "fp32"]) == 0
        reports[name] = json.loads((out / "metrics.json").read_text())
        assert (out / "reliability.png").is_file()
    output = capsys.readouterr().out
    assert "before," in output and "after (NLL" in output  # eval says ECE before and after
    before, after = reports["before"], reports["after"]
    assert after["confusion_matrix"] == before["confusion_matrix"]  # the argmax cannot move
    assert after["calibration"]["nll"] < before["calibration"]["nll"]
    assert after["calibration"]["ece"] < before["calibration"]["ece"]
    assert after["calibration_before_temperature"]["ece"] == pytest.approx(before["calibration"]["ece"])


def test_calibrated_probabilities_are_identical_in_predict_serve_and_the_onnx_export(calibrated, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from visionfit.export import export_onnx
    from visionfit.prediction import Predictor
    from visionfit.serve.app import create_app

    _, checkpoint, _, _ = calibrated
    pictures = []
    for index in range(4):
        (tmp_path / f"{index}.png").write_bytes(image_bytes("PNG", (40 + index, 30), index))
        pictures.append(str(tmp_path / f"{index}.png"))
    model = load_for_inference(checkpoint, device="cpu", precision="fp32")
    assert model.temperature == load_checkpoint(checkpoint).metadata["calibration"]["temperature"]
    predicted = [row for row in Predictor(model).predict(pictures, top_k=3)]
    with TestClient(create_app(model)) as client:
        files = [("files", (Path(name).name, Path(name).read_bytes(), "image/png")) for name in pictures]
        served = [
            [(item["class"], item["probability"]) for item in record["top"]]
            for record in client.post("/predict?top_k=3", files=files).json()
        ]
    export = export_onnx(checkpoint, tmp_path / "model.onnx")
    exported_model = load_for_inference(export.path, device="cpu")
    assert exported_model.metadata["onnx"]["calibration"]["temperature"] == model.temperature
    exported = Predictor(exported_model).predict(pictures, top_k=3)
    raw = Predictor(load_for_inference(checkpoint, device="cpu", precision="fp32", calibrated=False))
    uncalibrated = raw.predict(pictures, top_k=3)
    for ours, theirs, onnx_row, raw_row in zip(predicted, served, exported, uncalibrated, strict=True):
        assert [name for name, _ in ours] == [name for name, _ in theirs] == [name for name, _ in onnx_row]
        for (_, probability), (_, other), (_, onnx_probability) in zip(ours, theirs, onnx_row, strict=True):
            assert abs(probability - other) <= 1e-5 and abs(probability - onnx_probability) <= 1e-5
        assert ours[0][1] < raw_row[0][1]  # the over-confident answer was toned down


def test_the_validation_split_must_exist_and_an_export_cannot_be_calibrated(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "fruit", per_class=4)
    checkpoint = overconfident_checkpoint(tmp_path / "model.safetensors", data)
    assert main(["calibrate", str(checkpoint), "--split", "val", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "has no validation split" in error and error.count("\n") == 1
    splits = load_data("folder", str(data))
    with pytest.raises(UserError, match="no validation split"):
        named_split(splits, "val")
    (tmp_path / "model.onnx").write_bytes(b"")
    assert main(["calibrate", str(tmp_path / "model.onnx"), "--split", "train"]) == 2
    assert "calibrate its checkpoint, then export it again" in capsys.readouterr().err


def test_the_end_of_a_run_calibrates_its_best_and_last_checkpoints(calibrated, tmp_path):
    import shutil

    from visionfit.calibrating import calibrate_run_checkpoints

    original, _, held_out, _ = calibrated
    best, last = tmp_path / "best.safetensors", tmp_path / "last.safetensors"
    shutil.copy(original, best)
    shutil.copy(original, last)
    samples = load_data("folder", str(held_out)).train
    result = calibrate_run_checkpoints(
        [best, last, tmp_path / "missing.safetensors"], samples, "validation split", device="cpu"
    )
    assert result is not None and result.after["nll"] < result.before["nll"]
    temperatures = [load_checkpoint(path).metadata["calibration"]["temperature"] for path in (best, last)]
    assert temperatures == [result.temperature] * 2
