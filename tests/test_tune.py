"""`visionfit tune`: the space file, the validation split, trials as run folders, pruning, failed
trials, best.yaml, and several workers (and a killed one) on one SQLite study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_folder_dataset
from visionfit.cli import main
from visionfit.config import build_config
from visionfit.errors import UserError
from visionfit.tune.space import default_space, parse_space, read_space

optuna = pytest.importorskip("optuna")

SOURCE = Path(__file__).resolve().parents[1] / "src"
TINY = ["--model", "cifar10-quick", "--no-tensorboard", "--batch-size", "8", "--workers", "0"]


class FixedTrial:
    """Records the suggest_* calls a space makes, answering each with its low end or first choice."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def suggest_float(self, name, low, high, step=None, log=False):
        self.calls.append(("float", name, low, high, step, log))
        return low

    def suggest_int(self, name, low, high, step=1, log=False):
        self.calls.append(("int", name, low, high, step, log))
        return low

    def suggest_categorical(self, name, choices):
        self.calls.append(("choice", name, tuple(choices)))
        return choices[0]


def test_space_file_ranges_choices_and_fixed_values(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {low: 0.001, high: 0.1, log: true}\n"
        "batch-size: {low: 16, high: 64, step: 16}\n"
        "auto_augment: {choices: [none, trivialwide]}\n"
        "label_smoothing: 0.1\n"
        "model_args: {value: {width: 8}}\n",
        encoding="utf-8",
    )
    space = read_space(path)
    trial = FixedTrial()
    values = space.suggest(trial)
    assert trial.calls == [
        ("float", "lr", 0.001, 0.1, None, True),
        ("int", "batch_size", 16, 64, 16, False),  # an int option draws ints
        ("choice", "auto_augment", ("none", "trivialwide")),
    ]
    assert values == {
        "label_smoothing": 0.1,
        "model_args": {"width": 8},
        "lr": 0.001,
        "batch_size": 16,
        "auto_augment": "none",
    }


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"learning_rate": {"low": 0.1, "high": 1}}, "unknown train option 'learning_rate'"),
        ({"lr": {"low": 1, "high": 0.1}}, "must be below high"),
        ({"lr": {"low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
        ({"lr": {"low": 0.1}}, "must be a value, {choices"),
        ({"optimizer": {"low": 1, "high": 2}}, "is not a number"),
        ({"data_dir": {"choices": ["a", "b"]}}, "cannot be searched"),
        ({"val_fraction": {"low": 0.1, "high": 0.3}}, "cannot be searched"),
        ({"auto_augment": {"choices": []}}, "non-empty list"),
        ({"lr": 0.1}, "names no option to search"),
    ],
)
def test_space_errors_are_one_line_naming_the_entry(entries, message):
    with pytest.raises(UserError, match=message.replace("{", r"\{")):
        parse_space(entries)


def test_default_space_follows_the_recipe():
    scratch = default_space(build_config(flag_values={"recipe": "scratch"}))
    lr = next(parameter for parameter in scratch.parameters if parameter.name == "lr")
    assert (lr.low, lr.high, lr.log) == pytest.approx((0.01, 0.3, True))  # around scratch's 0.1
    assert {"auto_augment", "mixup", "cutmix", "ema", "label_smoothing"} <= {
        p.name for p in scratch.parameters
    }
    transfer = default_space(build_config(flag_values={"recipe": "transfer"}))
    assert "backbone_lr_scale" in {parameter.name for parameter in transfer.parameters}


def tune_command(data: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "tune",
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--run-dir",
        str(runs),
        *TINY,
        *extra,
    ]


def load_study(runs: Path, name: str = "tune"):
    storage = f"sqlite:///{(runs / name / 'study.db').resolve()}"
    return optuna.load_study(study_name=name, storage=storage)


def test_tune_trials_are_run_folders_on_a_validation_split_and_best_yaml_trains(
    capsys, split_dataset, tmp_path
):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.01, high: 0.1, log: true}\n", encoding="utf-8")
    runs = tmp_path / "runs"
    code = main(tune_command(split_dataset, runs, "--epochs", "1", "--trials", "2", "--space", str(space)))
    out = capsys.readouterr().out
    assert code == 0
    assert "| trial | val accuracy | epochs | lr | run folder |" in out
    assert "its test accuracy (measured once, at the end of its run):" in out
    study = load_study(runs)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        folder = runs / "tune" / "trials" / f"trial-{trial.number:04d}"
        status = json.loads((folder / "run.json").read_text())
        assert status["status"] == "finished" and status["trial"] == trial.number
        # Scored on validation held out of train/ (val/ of a two-folder dataset is the test split).
        assert status["best_chosen_on"] == "val" and "accuracy" in status["test"]
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert trial.value == max(record["val"]["accuracy"] for record in records)
        assert all(record["test"] is None for record in records)
        assert (folder / "config.yaml").is_file() and (folder / "metrics.jsonl").is_file()
        assert (folder / "checkpoints" / "best.safetensors").is_file()
    assert {path.name for path in (runs / "tune").glob("*.png")} >= {"optimization_history.png"}
    best = runs / "tune" / "best.yaml"
    text = best.read_text()
    assert f"data_dir: {split_dataset}" in text and f"lr: {study.best_params['lr']}" in text
    assert "val_fraction: 0.2" in text
    code = main(["train", "--config", str(best), "--run-dir", str(tmp_path / "final"), "--name", "best"])
    assert code == 0
    assert json.loads((tmp_path / "final" / "best" / "run.json").read_text())["status"] == "finished"


def test_tune_takes_trains_own_val_fraction_and_best_metric(capsys, split_dataset, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--epochs", "2", "--trials", "1", "--val-fraction", "0.5", "--best-metric", "loss")
    code = main(tune_command(split_dataset, runs, *extra))
    out = capsys.readouterr().out
    assert code == 0
    assert "| trial | val loss | epochs |" in out and "best validation loss " in out
    folder = runs / "tune" / "trials" / "trial-0000"
    assert "val_fraction: 0.5" in (folder / "config.yaml").read_text()
    assert "val_fraction: 0.5" in (runs / "tune" / "best.yaml").read_text()
    assert json.loads((folder / "run.json").read_text())["best_chosen_on"] == "val"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["val"]["count"] == 12  # half of the 24 training images, none of val/ (the test split)
    trial = load_study(runs).trials[0]
    assert trial.value == -min(record["val"]["loss"] for record in records)  # the lowest loss is best


def test_the_datas_own_validation_split_scores_the_trials(tmp_path):
    from visionfit.tune.search import with_validation

    two = make_folder_dataset(tmp_path / "two", split=True)  # train/ and val/: val/ is the test split
    three = make_folder_dataset(tmp_path / "three", split=True)
    shutil.copytree(three / "val", three / "test")  # train/, val/ and test/: the data's own validation
    base = build_config(flag_values={"dataset": "folder", "data_dir": str(three)})
    assert with_validation(base, 0.2).val_fraction is None  # its own val/, not a share of train
    shared = build_config(flag_values={"dataset": "folder", "data_dir": str(two)})
    assert with_validation(shared, 0.2).val_fraction == 0.2
    given = build_config(flag_values={"dataset": "folder", "data_dir": str(two), "val_fraction": 0.3})
    assert with_validation(given, 0.2).val_fraction == 0.3


def test_a_failing_trial_is_marked_failed_and_the_study_goes_on(capsys, folder_dataset, tmp_path):
    from visionfit.tune.search import TuneOptions, tune
    from visionfit.tune.study import StudyOptions, done_trials, open_study

    runs = tmp_path / "runs"
    base = build_config(flag_values={"dataset": "folder", "data_dir": str(folder_dataset), "epochs": 1,
                                     "model": "cifar10-quick", "tensorboard": False, "batch_size": 8,
                                     "run_dir": str(runs)})  # fmt: skip
    space = parse_space({"model": {"choices": ["cifar10-quick", "no-such-model"]}})
    study_options = StudyOptions("tune", runs / "tune", sampler="random")
    study = open_study(study_options, epochs=1)
    study.enqueue_trial({"model": "no-such-model"})
    study.enqueue_trial({"model": "cifar10-quick"})
    result = tune(base, space, study_options, TuneOptions(trials=2))
    states = [trial.state.name for trial in load_study(runs).trials]
    assert states == ["FAIL", "COMPLETE"]
    assert "no-such-model" in load_study(runs).trials[0].user_attrs["failure"]
    assert done_trials(load_study(runs)) == 2 and result.best_config is not None


def test_pruned_trial_stops_early_and_says_so_in_run_json(capsys, folder_dataset, tmp_path):
    from visionfit.tune.search import TuneOptions, tune
    from visionfit.tune.study import StudyOptions, open_study

    runs = tmp_path / "runs"
    base = build_config(flag_values={"dataset": "folder", "data_dir": str(folder_dataset), "epochs": 4,
                                     "model": "cifar10-quick", "tensorboard": False, "batch_size": 8,
                                     "optimizer": "adamw", "run_dir": str(runs)})  # fmt: skip
    space = parse_space({"lr": {"choices": [0.003, 1e-9]}})
    study_options = StudyOptions("tune", runs / "tune", startup_trials=1, prune_from=2)
    study = open_study(study_options, epochs=4)
    study.enqueue_trial({"lr": 0.003})  # learns the three colours
    study.enqueue_trial({"lr": 1e-9})  # learns nothing: pruned after epoch 2
    tune(base, space, study_options, TuneOptions(trials=2))
    trials = load_study(runs).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "PRUNED"]
    status = json.loads((runs / "tune" / "trials" / "trial-0001" / "run.json").read_text())
    assert status["status"] == "pruned" and status["pruned_at_epoch"] == 2
    assert trials[1].user_attrs["epochs_trained"] == 2


def test_pruners_follow_the_trial_length():
    from visionfit.tune.study import StudyOptions, create_pruner

    median = create_pruner(StudyOptions("tune", Path("unused")), epochs=10)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps, median._interval_steps) == (3, 2, 1)
    assert create_pruner(StudyOptions("tune", Path("unused")), epochs=3)._n_warmup_steps == 1
    given = create_pruner(StudyOptions("tune", Path("unused"), startup_trials=5, prune_from=4), epochs=10)
    assert (given._n_startup_trials, given._n_warmup_steps) == (5, 4)
    hyperband = create_pruner(StudyOptions("tune", Path("unused"), pruner="hyperband"), epochs=9)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 9


def test_hyperband_study_in_the_database_a_storage_url_names(capsys, folder_dataset, tmp_path):
    database = tmp_path / "shared" / "studies.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    runs = tmp_path / "runs"
    extra = ("--epochs", "2", "--trials", "2", "--pruner", "hyperband", "--storage", url, "--study", "hb")
    assert main(tune_command(folder_dataset, runs, *extra)) == 0
    assert f"dashboard: optuna-dashboard {url}" in capsys.readouterr().out
    assert not (runs / "hb" / "study.db").exists()  # the study lives in the URL's database
    trials = optuna.load_study(study_name="hb", storage=url).trials
    assert len(trials) == 2 and {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}
    assert all(trial.intermediate_values for trial in trials)  # each epoch reported to hyperband
    assert (runs / "hb" / "best.yaml").is_file()


def worker(data: Path, runs: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "visionfit", *tune_command(data, runs, *extra)]
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_two_workers_share_one_sqlite_study(folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    # No pruning: a trial after the 3 start-up trials could be pruned at epoch 1, and this test is
    # about two workers sharing one study, not about which trials finish.
    extra = ("--epochs", "1", "--trials", "4", "--search", "random", "--pruner", "none")
    workers = [worker(folder_dataset, runs, *extra) for _ in range(2)]
    for process in workers:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-2000:]
    trials = load_study(runs).trials
    numbers = [trial.number for trial in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no number twice, none missing
    states = [(trial.number, trial.state.name, trial.user_attrs.get("failure")) for trial in trials]
    assert all(trial.state.name == "COMPLETE" for trial in trials), states  # none lost or left running
    assert 4 <= len(trials) <= 5  # the second worker may start one while the first ends the 4th
    folders = sorted(path.name for path in (runs / "tune" / "trials").iterdir())
    assert folders == [f"trial-{number:04d}" for number in sorted(numbers)]  # one run folder each


def test_a_killed_worker_leaves_a_consistent_study_that_a_restart_finishes(folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--epochs", "6", "--trials", "1", "--pruner", "none", "--heartbeat", "1")
    first = worker(folder_dataset, runs, *extra)
    last = runs / "tune" / "trials" / "trial-0000" / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the trial never got going"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-trial, after its first epoch: trial 0 is left RUNNING
    first.wait()
    assert [trial.state.name for trial in load_study(runs).trials] == ["RUNNING"]
    time.sleep(2.5)  # its heartbeat goes stale (grace: twice the heartbeat)
    second = worker(folder_dataset, runs, *extra)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err.decode()[-2000:]
    trials = load_study(runs).trials
    assert trials[0].state.name == "FAIL" and "failure" not in trials[0].user_attrs
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params  # the same trial, run again
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]  # one done trial, not two
    # The retry continued the dead trial's run from its last checkpoint, in its own folder.
    assert not (runs / "tune" / "trials" / "trial-0000").exists()
    folder = runs / "tune" / "trials" / "trial-0001"
    status = json.loads((folder / "run.json").read_text())
    assert status["status"] == "finished" and "resumed" in status and status["trial"] == 1
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert sorted(trials[1].intermediate_values) == epochs  # the resumed epochs reported too


HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from visionfit.engine.run_lock import lock_run_folder; "
    "lock = lock_run_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
)


def test_a_retry_takes_over_a_run_only_once_no_process_writes_it(tmp_path):
    from visionfit.tune.objective import RUN_FOLDER, continued_run

    earlier, later = tmp_path / "trials" / "trial-0000", tmp_path / "trials" / "trial-0002"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "last.safetensors").write_bytes(b"")

    # What Optuna's retry of trial 0 carries: the dead trial's user attributes, its run folder too.
    retry = SimpleNamespace(number=2, user_attrs={RUN_FOLDER: str(earlier)})

    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    command = [sys.executable, "-c", HOLD_LOCK, str(earlier)]
    holder = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert not continued_run(retry, later)  # its worker was only late: a fresh run folder
        assert earlier.is_dir() and not later.exists()
    finally:
        holder.kill()
        holder.wait()
    assert continued_run(retry, later)  # the writer is gone: the retry continues its run
    assert (later / "checkpoints" / "last.safetensors").is_file() and not earlier.exists()


def test_without_optuna_tune_says_which_extra_to_install(capsys, monkeypatch, folder_dataset, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    code = main(tune_command(folder_dataset, tmp_path / "runs", "--trials", "1"))
    assert code == 2
    assert "pip install 'visionfit[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_tune_help_says_what_scores_the_trials(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert stopped.value.code == 0
    assert "held out for validation, which scores the trials (default: the data's own validation" in out
    assert "--startup-trials N trials the median pruner lets finish before it stops any (default: 3)" in out
