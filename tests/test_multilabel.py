"""Several labels per image: the metrics against scikit-learn, the thresholds, and a multi-label run
through train, eval and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_score,
    recall_score,
)

from visionfit.engine.multilabel import MultiLabelLoss, choose_thresholds, multilabel_report


def scored(seed: int = 0, count: int = 300, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 targets and scores that lean towards them, rounded so that scores tie."""
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(count, classes, generator=generator) < 0.3).float()
    scores = targets * 0.3 + torch.rand(count, classes, generator=generator) * 0.7
    return torch.round(scores * 20) / 20, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_scikit_learn(seed):
    scores, targets = scored(seed)
    thresholds = [0.3, 0.4, 0.5, 0.55, 0.6, 0.7]
    report = multilabel_report(scores, targets, [f"c{index}" for index in range(6)], thresholds, loss_sum=1.0)
    truth, predicted = targets.numpy(), (scores >= torch.tensor(thresholds)).numpy()
    assert report["map"] == pytest.approx(average_precision_score(truth, scores.numpy(), average="macro"))
    for average in ("micro", "macro"):
        assert report[average]["f1"] == pytest.approx(
            f1_score(truth, predicted, average=average, zero_division=0)
        )
        assert report[average]["precision"] == pytest.approx(
            precision_score(truth, predicted, average=average, zero_division=0)
        )
        assert report[average]["recall"] == pytest.approx(recall_score(truth, predicted, average=average))
    assert report["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert report["exact_match"] == pytest.approx(accuracy_score(truth, predicted))
    for index in range(6):
        values = report["per_class"][f"c{index}"]
        assert values["ap"] == pytest.approx(
            average_precision_score(truth[:, index], scores[:, index].numpy())
        )
        assert values["support"] == int(truth[:, index].sum()) and values["threshold"] == thresholds[index]


def test_a_class_without_positives_is_left_out_of_the_map():
    scores, targets = scored()
    targets[:, 0] = 0
    report = multilabel_report(scores, targets, [f"c{index}" for index in range(6)])
    assert report["per_class"]["c0"]["ap"] is None
    expected = average_precision_score(targets[:, 1:].numpy(), scores[:, 1:].numpy(), average="macro")
    assert report["map"] == pytest.approx(expected)


def test_thresholds_maximise_each_class_f1():
    scores, targets = scored(3)
    thresholds = choose_thresholds(scores, targets)
    for index, threshold in enumerate(thresholds):
        truth, column = targets[:, index].numpy(), scores[:, index].numpy()
        best = max(f1_score(truth, column >= cut, zero_division=0) for cut in np.unique(column))
        assert f1_score(truth, column >= threshold, zero_division=0) == pytest.approx(best)
        assert f1_score(truth, column >= 0.5, zero_division=0) <= best


def test_loss_is_binary_cross_entropy_with_smoothing():
    logits, targets = torch.randn(8, 5), (torch.rand(8, 5) < 0.5).float()
    plain = torch.nn.BCEWithLogitsLoss()(logits, targets)
    assert MultiLabelLoss()(logits, targets) == pytest.approx(float(plain))
    smoothed = torch.nn.BCEWithLogitsLoss()(logits, targets * 0.8 + 0.1)
    assert MultiLabelLoss(0.2)(logits, targets) == pytest.approx(float(smoothed))


def test_report_is_json_ready():
    scores, targets = scored()
    json.dumps(multilabel_report(scores, targets, [f"c{index}" for index in range(6)]))


@pytest.fixture(scope="module")
def multilabel_set(tmp_path_factory: pytest.TempPathFactory):
    """Colour pictures, each labelled with its colour and, for every other one, `dark` too; the
    split column makes a third of each colour val."""
    from conftest import COLORS, make_image

    root = tmp_path_factory.mktemp("multilabel")
    lines = ["file,labels,split"]
    for class_index, (name, color) in enumerate(COLORS.items()):
        for index in range(9):
            dark = index % 2 == 1
            shade = tuple(value // 3 for value in color) if dark else color
            make_image(root / name / f"{index}.png", shade, seed=class_index * 20 + index)
            labels = f"{name};dark" if dark else name
            lines.append(f"{name}/{index}.png,{labels},{'val' if index < 3 else 'train'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def train_arguments(multilabel_set, run_dir, *flags) -> list[str]:
    arguments = ["train", "--labels", str(multilabel_set / "labels.csv"), "--model", "cifar10-quick"]
    return [
        *arguments,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--run-dir",
        str(run_dir),
        *flags,
    ]


@pytest.fixture(scope="module")
def trained(multilabel_set, tmp_path_factory):
    """A two-epoch multi-label run's folder."""
    from visionfit.cli import main

    runs = tmp_path_factory.mktemp("multilabel_runs")
    assert main(train_arguments(multilabel_set, runs, "--name", "run")) == 0
    return runs / "run"


def test_multilabel_run_reports_map_and_keeps_thresholds(trained):
    from visionfit.engine.checkpoint_file import load_checkpoint

    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    test = records[-1]["test"]
    assert test["task"] == "multilabel" and set(test["per_class"]) == {"apple", "dark", "grape", "lime"}
    for key in ("map", "exact_match", "hamming_loss"):
        assert 0 <= test[key] <= 1
    assert {"micro", "macro"} <= set(test) and test["thresholds_chosen"] is True
    assert (trained / "label_counts.png").is_file() and not (trained / "confusion_matrix.png").exists()
    checkpoint = load_checkpoint(trained / "checkpoints" / "best.safetensors")
    best = next(record for record in records if record["epoch"] == checkpoint.metadata["epoch"])
    assert checkpoint.metadata["thresholds"] == best["test"]["thresholds"]
    assert checkpoint.metadata["config"]["task"] == "multilabel"


def expected_sets(predictor, pictures) -> list[set[str]]:
    from visionfit.prediction import picture_pixels

    pixels = torch.stack([picture_pixels(picture, predictor.preprocess) for picture in pictures])
    probabilities, thresholds = predictor.model.probabilities(pixels), predictor.model.thresholds
    return [
        {name for index, name in enumerate(predictor.classes) if row[index] >= thresholds[index]}
        for row in probabilities
    ]


def test_multilabel_predict_and_eval_answer_with_sets(capsys, multilabel_set, trained, tmp_path):
    from visionfit.cli import main
    from visionfit.prediction import load

    best = trained / "checkpoints" / "best.safetensors"
    pictures = sorted(str(path) for path in multilabel_set.glob("*/*.png"))
    predictor = load(best)
    expected = expected_sets(predictor, pictures)
    assert [{name for name, _ in labels} for labels in predictor.predict(pictures)] == expected
    assert main(["predict", str(best), *pictures[:3], "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [{item["class"] for item in line["labels"]} for line in lines] == expected[:3]
    out = tmp_path / "eval"
    assert main(["eval", str(best), "--out", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and (out / "per_class.csv").read_text().startswith("class,ap,")


def test_serve_answers_with_the_label_sets(multilabel_set, trained):
    from fastapi.testclient import TestClient

    from visionfit.inference import load_for_inference
    from visionfit.prediction import Predictor
    from visionfit.serve.app import create_app

    model = load_for_inference(trained / "checkpoints" / "best.safetensors", device="cpu", precision="fp32")
    pictures = sorted(multilabel_set.glob("*/*.png"))[:4]
    expected = expected_sets(Predictor(model), [str(path) for path in pictures])
    files = [("files", (path.name, path.read_bytes(), "image/png")) for path in pictures]
    with TestClient(create_app(model)) as client:
        answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    assert [{item["class"] for item in record["labels"]} for record in answer.json()] == expected


@pytest.mark.slow
def test_export_answers_with_the_same_sets_on_100_pictures(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    from PIL import Image

    from visionfit.cli import main
    from visionfit.prediction import load

    best, exported = trained / "checkpoints" / "best.safetensors", tmp_path / "model.onnx"
    assert main(["export", str(best), "--out", str(exported)]) == 0
    rng = np.random.default_rng(0)
    pictures = []
    for index in range(100):
        colour = rng.integers(0, 256, 3)
        pixels = np.clip(colour + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
        pictures.append(str(tmp_path / f"{index}.png"))
    from_checkpoint, from_export = load(best), load(exported)
    assert from_export.model.multilabel and from_export.model.thresholds == from_checkpoint.model.thresholds
    answers, exported_answers = from_checkpoint.predict(pictures), from_export.predict(pictures)
    assert [{name for name, _ in labels} for labels in exported_answers] == [
        {name for name, _ in labels} for labels in answers
    ]
    assert any(answers)  # not a parity of empty sets
    for labels, exported_labels in zip(answers, exported_answers, strict=True):
        for (_, value), (_, exported_value) in zip(labels, exported_labels, strict=True):
            assert exported_value == pytest.approx(value, abs=1e-4)


def test_mixup_is_refused_for_multilabel_in_one_line(capsys, multilabel_set, tmp_path):
    from visionfit.cli import main

    code = main(train_arguments(multilabel_set, tmp_path / "runs", "--mixup", "0.2"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("visionfit: error: ")]
    assert code == 2 and len(errors) == 1 and "cannot use them" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_multilabel_model_has_no_temperature_and_calibrate_says_why(capsys, trained):
    from visionfit.cli import main
    from visionfit.engine.checkpoint_file import load_checkpoint

    best = trained / "checkpoints" / "best.safetensors"
    assert "calibration" not in load_checkpoint(best).metadata  # thresholds, not a temperature
    capsys.readouterr()
    assert main(["calibrate", str(trained), "--split", "val"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "multi-label model: no temperature" in error
    assert "calibration" not in load_checkpoint(best).metadata
