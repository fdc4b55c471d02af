"""train → eval → predict on a tiny dataset through the CLI: tables, --json, --csv, report files,
TensorBoard images, failure rows and one-line errors."""

import csv
import json

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_folder_dataset
from visionfit.cli import main
from visionfit.engine.loops import classify
from visionfit.engine.metrics import Predictions
from visionfit.errors import UserError
from visionfit.evaluation import check_classes, format_confusion
from visionfit.prediction import picture_pixels

CLASSES = ["apple", "grape", "lime"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("use")
    data = make_folder_dataset(root / "fruit", per_class=6, split=True)
    code = main(
        [
            "train",
            *("--dataset", "folder", "--data-dir", str(data), "--epochs", "2"),
            *("--batch-size", "4", "--workers", "0", "--run-dir", str(root / "runs"), "--name", "fruit"),
        ]
    )
    assert code == 0
    return root, data, root / "runs" / "fruit"


def test_train_writes_plots_and_logs_them_to_tensorboard(trained):
    _, _, run = trained
    for name in ("confusion_matrix", "mistakes", "curves"):
        with Image.open(run / f"{name}.png") as image:
            assert image.width > 200 and image.height > 200
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"plots/confusion_matrix", "plots/mistakes", "plots/curves"} <= set(events.Tags()["images"])


def test_eval_prints_the_table_and_writes_the_report(trained, capsys):
    root, data, run = trained
    out = root / "report"
    assert main(["eval", str(run), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "macro avg" in printed and "true \\ predicted" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # the same numbers as training's evaluation of the best epoch's weights
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_epoch = json.loads((run / "run.json").read_text())["best_epoch"]
    trained_report = next(record["test"] for record in history if record["epoch"] == best_epoch)
    assert metrics["confusion_matrix"] == trained_report["confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(trained_report["accuracy"])
    assert metrics["loss"] == pytest.approx(trained_report["loss"], rel=1e-5)
    assert metrics["classes"] == CLASSES and metrics["count"] == 9
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [[int(value) for value in row[1:]] for row in rows[1:]] == metrics["confusion_matrix"]
    for name in ("confusion_matrix.png", "mistakes.png"):
        with Image.open(out / name) as image:
            image.verify()

    assert main(["eval", str(run), "--split", "train", "--dataset", "folder", "--data-dir", str(data)]) == 0
    assert "train split" in capsys.readouterr().out


def test_test_time_flip_and_shift_reach_eval_and_predict_through_the_checkpoint(tmp_path, capsys):
    import visionfit

    data = make_folder_dataset(tmp_path / "fruit", per_class=6, split=True)
    arguments = ["--dataset", "folder", "--data-dir", str(data), "--epochs", "1", "--batch-size", "4"]
    run = tmp_path / "runs" / "flip"
    assert (
        main(
            [
                "train",
                *arguments,
                "--workers",
                "0",
                "--test-time-flip",
                "--test-time-shift",
                "1",
                "--run-dir",
                str(run.parent),
                "--name",
                "flip",
            ]
        )
        == 0
    )
    trained_report = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert main(["eval", str(run), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(trained_report["loss"], rel=1e-5)
    assert metrics["confusion_matrix"] == trained_report["confusion_matrix"]

    predictor = visionfit.load(run, device="cpu", precision="fp32")
    assert predictor.model.flip and predictor.model.shift == 1
    image = next((data / "val" / "apple").iterdir())
    batch = predictor.model.classifier.prepare(picture_pixels(image, predictor.preprocess).unsqueeze(0))
    with torch.no_grad():
        logits = classify(predictor.model.network, batch, flip=True, shift=1)
        flip_only = classify(predictor.model.network, batch, flip=True)
    assert predictor.predict(image)[0][0][1] == pytest.approx(float(torch.softmax(logits, 1).max()), abs=1e-5)
    assert not visionfit.load(run, device="cpu", flip=False).model.flip
    assert visionfit.load(run, device="cpu", shift=0).model.shift == 0
    capsys.readouterr()
    assert (
        main(["predict", str(run), str(image), "--json", "--precision", "fp32", "--test-time-shift", "0"])
        == 0
    )
    without_shift = json.loads(capsys.readouterr().out)["probability"]
    assert without_shift == pytest.approx(float(torch.softmax(flip_only, 1).max()), abs=1e-5)

    assert main(["predict", str(run), str(image), "--json", "--precision", "fp32"]) == 0
    with_flip = json.loads(capsys.readouterr().out)["probability"]
    assert (
        main(["predict", str(run), str(image), "--json", "--precision", "fp32", "--no-test-time-flip"]) == 0
    )
    without_flip = json.loads(capsys.readouterr().out)["probability"]
    assert with_flip == pytest.approx(float(torch.softmax(logits, 1).max()), abs=1e-5)
    assert with_flip != without_flip


def test_eval_refuses_data_with_other_classes_in_one_line(trained, tmp_path, capsys):
    _, _, run = trained
    other = tmp_path / "other"
    for name in ("apple", "pear", "lime"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / name / "0.png")
        Image.new("RGB", (8, 8)).save(other / name / "1.png")
    assert main(["eval", str(run), "--dataset", "folder", "--data-dir", str(other)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing grape" in error and "extra pear" in error


def test_predict_table_json_csv_and_failure_rows(trained, capsys):
    root, data, run = trained
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    inputs = [str(data / "val" / "grape"), str(root / "broken.jpg")]
    assert main(["predict", str(run), *inputs, "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["file", "class", "probability", "next", "classes"]
    assert len(lines) == 1 + 3 + 1
    assert all(" grape " in line for line in lines[1:4])
    assert "broken.jpg" in lines[4] and "ERROR" in lines[4] and "not a readable image" in lines[4]
    assert "1 of 4 input(s) could not be read" in captured.err and "Traceback" not in captured.err

    table = root / "predictions.csv"
    assert main(["predict", str(run), *inputs, "--json", "--top-k", "3", "--csv", str(table)]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["class"] for record in records[:3]] == ["grape"] * 3
    assert len(records[0]["top"]) == 3 and sum(item["probability"] for item in records[0]["top"]) == (
        pytest.approx(1.0, abs=1e-5)
    )
    assert records[3]["file"].endswith("broken.jpg") and "error" in records[3]
    rows = list(csv.DictReader(table.open()))
    assert [row["class_1"] for row in rows[:3]] == ["grape"] * 3 and rows[3]["error"]
    assert float(rows[0]["probability_1"]) == pytest.approx(records[0]["probability"], abs=1e-6)

    assert main(["predict", str(run), str(data / "val" / "lime" / "0.png"), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "lime"


def test_predict_errors_are_one_line(trained, tmp_path, capsys):
    _, data, _ = trained
    assert main(["predict", str(tmp_path / "nothing.safetensors"), str(data)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "old.pth").write_bytes(b"PK\x03\x04")
    assert main(["predict", str(tmp_path / "old.pth"), str(data)]) == 2
    assert "visionfit import" in capsys.readouterr().err


def test_end_of_run_plots_test_as_the_run_did(tmp_path):
    """The end-of-run confusion matrix and mistakes come from the last epoch's test, with its flip
    test-time augmentation (they once ignored it), so they agree with that epoch and with eval."""
    from test_resume import make_noisy_dataset

    data = make_noisy_dataset(tmp_path / "noisy", per_class=12)
    run = tmp_path / "runs" / "tta"
    flags = ["--dataset", "folder", "--data-dir", str(data), "--test-fraction", "0.5", "--epochs", "1"]
    flags += ["--batch-size", "4", "--test-time-flip", "--precision", "fp32", "--no-tensorboard"]
    assert main(["train", *flags, "--run-dir", str(run.parent), "--name", "tta"]) == 0
    assert main(["eval", str(run), "--out", str(tmp_path / "report"), "--precision", "fp32"]) == 0
    evaluated = json.loads((tmp_path / "report" / "metrics.json").read_text())
    trained = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    plotted = json.loads((run / "mistakes.json").read_text())
    assert plotted, "the noisy data should leave some test images misclassified"
    assert [(m["source"], m["predicted"]) for m in plotted] == [
        (m["source"], m["predicted"]) for m in evaluated["mistakes"]
    ]
    for mine, theirs in zip(plotted, evaluated["mistakes"], strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-5)


def test_most_confident_mistakes_come_first():
    predictions = Predictions(
        indices=torch.tensor([10, 11, 12, 13, 14]),
        targets=torch.tensor([0, 1, 2, 0, 1]),
        predicted=torch.tensor([1, 1, 0, 2, 2]),
        confidence=torch.tensor([0.5, 0.99, 0.9, 0.7, 0.6]),
    )
    mistakes = predictions.most_confident_mistakes(16)
    assert [index for index, *_ in mistakes] == [12, 13, 14, 10]  # sample indices, not positions
    assert mistakes[0] == (12, 2, 0, pytest.approx(0.9))
    assert [index for index, *_ in predictions.most_confident_mistakes(2)] == [12, 13]


def test_predictions_of_several_processes_join_in_sample_order():
    def part(indices):
        values = torch.tensor(indices)
        return Predictions(values, values % 3, (values + 1) % 3, values.float() / 10)

    joined = Predictions.joined([part([0, 2, 4]), part([1, 3])])
    assert joined.indices.tolist() == [0, 1, 2, 3, 4]
    assert joined.targets.tolist() == [0, 1, 2, 0, 1] and joined.confidence[3] == pytest.approx(0.3)


def test_class_check_and_confusion_text():
    check_classes(CLASSES, CLASSES, "x")
    with pytest.raises(UserError, match="same names in another order"):
        check_classes(["grape", "apple", "lime"], CLASSES, "x")
    assert format_confusion([[2, 0], [1, 3]], ["cat", "dog"]).splitlines() == [
        "true \\ predicted   0   1",
        "0 cat              2   0",
        "1 dog              1   3",
    ]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["serve", "model.safetensors", "--port", "70000"], "must be between 1 and 65535, got 70000"),
        (["serve", "model.safetensors", "--port", "http"], "expected a port number, got 'http'"),
    ],
)
def test_shared_argument_types_refuse_bad_values_in_one_line(capsys, command, message):
    with pytest.raises(SystemExit) as stopped:
        main(command)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_doctor_checks_its_data_options_as_train_does(capsys, tmp_path):
    # doctor's data flags are train's, checked by train's config validation: one line, exit 2.
    assert main(["doctor", "--test-fraction", "1.5", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == ["visionfit: error: --test-fraction must be between 0 and 1, got 1.5"]
