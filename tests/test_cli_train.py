import json
import os

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tree_digest
from visionfit.cli import main
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.serialization import load_model

FAST = ["--batch-size", "4", "--workers", "0"]


def run_train(capsys, *arguments):
    code = main(["train", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_end_to_end_writes_a_complete_run(capsys, folder_dataset, tmp_path):
    before = tree_digest(folder_dataset)
    code, out, err = run_train(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--epochs",
        "2",
        "--run-dir",
        str(tmp_path / "runs"),
        "--name",
        "fruit",
        "--log-every",
        "2",
        *FAST,
    )
    assert code == 0, err
    run = tmp_path / "runs" / "fruit"
    assert tree_digest(folder_dataset) == before  # input files are never modified

    # console: the tutorial's step lines, one summary per epoch, the final table
    assert "epoch 1/2  step 2  loss" in out
    assert out.count("train loss") == 2 and "test acc" in out and "macro avg" in out

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["dataset"] == "folder" and config["epochs"] == 2 and config["batch_size"] == 4
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["classes"] == ["apple", "grape", "lime"]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    test = records[-1]["test"]
    assert test["count"] == 3 and set(test["per_class"]) == {"apple", "grape", "lime"}
    assert sum(map(sum, test["confusion_matrix"])) == 3 and 0 <= test["accuracy"] <= 1

    last = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert last.classes == ["apple", "grape", "lime"] and last.metadata["epoch"] == 2
    assert last.metadata["config"]["dataset"] == "folder"
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert best.metadata["metrics"]["test_accuracy"] == max(r["test"]["accuracy"] for r in records)
    assert load_model(run).training is False

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    steps_per_epoch = 21 // 4
    assert [event.step for event in events.Scalars("train/loss")] == list(
        range(2, 2 * steps_per_epoch + 1, 2)
    )
    # epoch-level values sit at the epoch's last global step, with the epoch number beside them
    assert [event.step for event in events.Scalars("test/accuracy")] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [event.value for event in events.Scalars("epoch")] == [1, 2]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"])
    assert {"test/loss", "train/lr", "test/macro_f1", "test_per_class/f1/grape"} <= set(tags["scalars"])
    assert "train/images" in tags["images"] and tags["graph"]
    # calibration every epoch: console, metrics.jsonl, TensorBoard; the reliability diagram at the end
    assert out.count("ECE ") >= 2 and "calibration  ECE" in out
    assert {"ece", "mce", "nll", "brier", "bins"} <= set(test["calibration"])
    assert test["calibration"]["nll"] == pytest.approx(test["loss"], rel=1e-5)
    assert {"test_calibration/ece", "test_calibration/brier"} <= set(tags["scalars"])
    assert (run / "reliability.png").is_file() and "plots/reliability" in tags["images"]
    assert (run / "mistakes_cam.png").is_file()  # where the final weights looked, grad-cam being in dev
    assert "hparams" in events.PluginTagToContent("hparams") or events.PluginTagToContent("hparams")


def test_keep_every_epoch_keeps_the_tutorials_per_epoch_files(capsys, folder_dataset, tmp_path):
    code, _, err = run_train(
        capsys,
        "--data-dir",
        str(folder_dataset),
        "--dataset",
        "folder",
        "--epochs",
        "2",
        "--keep-every-epoch",
        "--no-tensorboard",
        "--run-dir",
        str(tmp_path),
        "--name",
        "r",
        *FAST,
    )
    assert code == 0, err
    names = sorted(path.name for path in (tmp_path / "r" / "checkpoints").glob("*.safetensors"))
    expected = ["best", "epoch_001", "epoch_002", "last.prev", "last"]
    assert names == sorted(f"{name}.safetensors" for name in expected)
    assert not list((tmp_path / "r").glob("events.out.tfevents*"))


def test_test_every_skips_tests_but_always_tests_the_last_epoch(capsys, folder_dataset, tmp_path):
    code, out, err = run_train(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--epochs",
        "3",
        "--test-every",
        "2",
        "--keep-every-epoch",
        "--run-dir",
        str(tmp_path),
        "--name",
        "t",
        *FAST,
    )
    assert code == 0, err
    run = tmp_path / "t"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["test"] is None for record in records] == [True, False, False]  # epochs 2 and 3
    assert out.count("train loss") == 3 and out.count("test acc ") == 2
    epoch_one = load_checkpoint(run / "checkpoints" / "epoch_001.safetensors").metadata["metrics"]
    assert set(epoch_one) == {"train_loss"}
    best = load_checkpoint(run / "checkpoints" / "best.safetensors").metadata
    assert best["epoch"] in (2, 3) and best["metrics"]["test_accuracy"] == max(
        record["test"]["accuracy"] for record in records[1:]
    )
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("test/accuracy")) == 2 and len(events.Scalars("epoch")) == 3
    assert (run / "curves.png").is_file()
    code, _, err = run_train(
        capsys, "--dataset", "folder", "--data-dir", str(folder_dataset), "--test-every", "0"
    )
    assert code == 2 and "--test-every must be at least 1" in err


def test_config_file_and_saved_config_reproduce_the_run(capsys, folder_dataset, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dataset: folder\ndata_dir: {folder_dataset}\nepochs: 1\nbatch_size: 4\nworkers: 0\nlr: 0.02\n"
    )
    code, _, err = run_train(capsys, "--config", str(config), "--run-dir", str(tmp_path), "--name", "a")
    assert code == 0, err
    saved = tmp_path / "a" / "config.yaml"
    assert yaml.safe_load(saved.read_text())["lr"] == 0.02
    code, _, err = run_train(capsys, "--config", str(saved), "--name", "b")
    assert code == 0, err
    first = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert first[0]["train_loss"] == second[0]["train_loss"]  # same seed, same data order, same result


def test_a_finished_run_is_never_overwritten(capsys, folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    arguments = [
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--epochs",
        "1",
        "--run-dir",
        str(runs),
        *FAST,
    ]
    assert run_train(capsys, *arguments, "--name", "same")[0] == 0
    before = tree_digest(runs / "same")
    code, _, err = run_train(capsys, *arguments, "--name", "same")
    assert code == 2 and "already exists (finished)" in err
    assert tree_digest(runs / "same") == before
    assert run_train(capsys, *arguments)[0] == 0
    assert run_train(capsys, *arguments)[0] == 0
    assert len(list(runs.iterdir())) == 3  # fresh default names never collide


def test_default_dataset_without_network_trains_on_the_sample(capsys, tmp_path):
    code, out, err = run_train(
        capsys,
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path),
        "--name",
        "s",
        "--no-tensorboard",
        "--batch-size",
        "256",
        "--model-arg",
        "width=4",  # the fast recipe's network, kept tiny so that the test stays quick
    )
    assert code == 0, err
    assert "training on the bundled cifar10-sample" in out
    assert "5000 train / 1000 test" in out
    saved = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert saved["dataset"] == "cifar10-sample"
    assert (saved["recipe"], saved["model"]) == ("fast", "airnet")  # the default for 32x32 data
    assert "airnet" in out and "memory data path" in out


SAMPLE = ["--dataset", "cifar10-sample"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--dataset", "folder", "--data-dir", "/nonexistent/data"],
            "--data-dir /nonexistent/data does not exist",
        ),
        (["--dataset", "cifar10"], "cannot download CIFAR-10"),
        ([*SAMPLE, "--model", "resnet9000"], "unknown model 'resnet9000'"),
        ([*SAMPLE, "--lr", "0"], "--lr must be a positive number"),
        ([*SAMPLE, "--device", "cuda:7"], "cuda:7"),
        ([*SAMPLE, "--model-arg", "depth=3"], "takes no argument 'depth'"),
        ([*SAMPLE, "--model", "cifar10-quick", "--input-size", "64"], "cannot take 64x64 input"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(capsys, tmp_path, arguments, message):
    code, _, err = run_train(capsys, *arguments, "--epochs", "1", "--run-dir", str(tmp_path))
    assert code == 2
    assert err.startswith("visionfit: error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_unreadable_image_is_a_one_line_error(capsys, folder_dataset, tmp_path):
    (folder_dataset / "lime" / "broken.png").write_bytes(b"not a png at all")
    code, _, err = run_train(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path),
        "--test-fraction",
        "0.5",
        *FAST,
    )
    assert code == 2 and err.count("\n") == 1
    assert "1 unreadable image file(s)" in err and "broken.png" in err and "--bad-images skip" in err


def test_run_dir_that_cannot_be_created_is_a_user_error(capsys, folder_dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_train(
        capsys,
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--run-dir",
        str(blocker / "runs"),
        *FAST,
    )
    assert code == 2 and "cannot create the run folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_run_dir_is_a_user_error(capsys, folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o500)
    code, _, err = run_train(
        capsys, "--dataset", "folder", "--data-dir", str(folder_dataset), "--run-dir", str(runs), *FAST
    )
    assert code == 2 and "not writable" in err
