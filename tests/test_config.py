import json

import pytest
import yaml

from visionfit.config import TrainConfig, apply_overrides, build_config, read_config_file, save_config
from visionfit.errors import UserError


def test_defaults_match_the_documented_ones():
    config = build_config({}, {"dataset": "folder", "data_dir": "photos"})
    assert (config.lr, config.batch_size, config.epochs, config.model) == (0.01, 64, 10, "cifar10-quick")
    assert config.recipe is None and config.shuffle and config.augment
    assert config.test_batch_size == 128
    assert (config.precision, config.channels_last, config.data_path) == ("auto", "auto", "auto")


@pytest.mark.parametrize(
    ("file_values", "flag_values", "recipe"),
    [
        ({}, {}, "fast"),  # CIFAR-10 by default
        ({}, {"dataset": "cifar10-sample"}, "fast"),
        ({"dataset": "cifar10"}, {"epochs": 3}, "fast"),
        ({}, {"dataset": "folder", "data_dir": "photos"}, None),
        ({}, {"model": "cifar10-quick"}, None),  # naming a model keeps the plain defaults
        ({}, {"recipe": "tutorial"}, "tutorial"),
    ],
)
def test_cifar_sized_data_defaults_to_the_fast_recipe(file_values, flag_values, recipe):
    config = build_config(file_values, flag_values)
    assert config.recipe == recipe
    assert (config.model == "airnet") == (recipe == "fast")


def test_a_data_dir_holding_cifar_batches_gets_the_fast_recipe(cifar_batches, tmp_path):
    assert build_config({}, {"data_dir": str(cifar_batches.parent)}).recipe == "fast"
    assert build_config({}, {"data_dir": str(tmp_path / "elsewhere")}).recipe is None


def test_layers_apply_in_order_recipe_then_file_then_flags():
    config = build_config({"lr": 0.05, "epochs": 3}, {"epochs": 7, "recipe": "tutorial"})
    assert config.recipe == "tutorial"
    assert config.momentum == 0.0 and config.augment is False  # from the recipe
    assert config.lr == 0.05  # the file beats the recipe
    assert config.epochs == 7  # a flag beats the file


def test_recipe_named_in_the_file_applies_and_a_flag_still_wins():
    config = build_config({"recipe": "tutorial"}, {"momentum": 0.5})
    assert config.scheduler == "none" and config.momentum == 0.5


def test_unknown_key_names_the_source_and_suggests():
    expected = r"unknown option 'batchsize' in run.yaml \(did you mean 'batch_size'"
    with pytest.raises(UserError, match=expected):
        build_config({"batchsize": 32}, file_name="run.yaml")


def test_unknown_recipe_is_refused():
    with pytest.raises(UserError, match="unknown recipe 'tutorail'.*did you mean 'tutorial'"):
        build_config({}, {"recipe": "tutorail"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": -1}, "--lr must be a positive number"),
        ({"lr": "fast"}, "lr must be float"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"batch_size": 2.5}, "batch_size must be int"),
        ({"momentum": 1.5}, r"--momentum must be in \[0, 1\)"),
        ({"test_fraction": 1.0}, "--test-fraction must be between 0 and 1"),
        ({"mean": [0.5, 0.5]}, "mean needs 3 comma-separated numbers"),
        ({"std": "1,0,1"}, "--std values must be positive"),
        ({"optimizer": "adam"}, "--optimizer must be one of sgd, adamw"),
        ({"device": "gpu"}, "--device must be auto, cpu, cuda, cuda:N or mps"),
        ({"dataset": "folder"}, "--dataset folder needs --data-dir"),
        ({"name": "a/b"}, "--name must be a plain folder name"),
        ({"augment": "maybe"}, "augment must be bool"),
    ],
)
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(UserError, match=message) as caught:
        build_config(values)
    assert "\n" not in str(caught.value)


def test_strings_from_flags_and_files_are_coerced():
    config = build_config({"mean": "0.1,0.2,0.3", "augment": "false", "epochs": "4"})
    assert config.mean == (0.1, 0.2, 0.3) and config.augment is False and config.epochs == 4


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_config_files_in_three_formats(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    text = {
        ".yaml": "lr: 0.2\nepochs: 2\n",
        ".json": json.dumps({"lr": 0.2, "epochs": 2}),
        ".toml": "lr = 0.2\nepochs = 2\n",
    }[suffix]
    path.write_text(text)
    config = build_config(read_config_file(path))
    assert (config.lr, config.epochs) == (0.2, 2)


def test_broken_or_missing_config_files_are_user_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [unclosed\n")
    with pytest.raises(UserError, match="cannot parse config file"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "run.ini").write_text("x")
    with pytest.raises(UserError, match=r"must end in \.yaml"):
        read_config_file(tmp_path / "run.ini")


def test_saved_config_reads_back_identically(tmp_path):
    config = build_config({"mean": [0.1, 0.2, 0.3], "model_args": {"width": 16}, "recipe": "tutorial"})
    save_config(config, tmp_path / "config.yaml")
    assert build_config(read_config_file(tmp_path / "config.yaml")) == config


def test_apply_overrides_accepts_dashes_and_returns_a_copy():
    base = TrainConfig()
    changed = apply_overrides(base, {"batch-size": 8}, "test")
    assert changed.batch_size == 8 and base.batch_size == 64


def test_the_python_api_applies_a_recipe_like_the_cli(folder_dataset, tmp_path):
    import visionfit

    result = visionfit.train(
        recipe="tutorial",
        dataset="folder",
        data_dir=str(folder_dataset),
        epochs=1,
        workers=0,
        run_dir=str(tmp_path / "runs"),
        name="api",
        tensorboard=False,
    )
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    # the tutorial recipe's own values, not the plain defaults (momentum 0.9, augmentation on)
    assert saved["recipe"] == "tutorial" and saved["momentum"] == 0.0 and saved["augment"] is False
    assert saved["epochs"] == 1  # an argument still beats the recipe
    with pytest.raises(UserError, match="unknown option 'epoch' in train\\(\\) arguments"):
        visionfit.train(epoch=3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"low_res_epochs": -1}, "--low-res-epochs must be 0"),
        ({"low_res_epochs": 3, "low_res_size": 4}, "--low-res-size must be at least 8"),
    ],
)
def test_low_res_values_are_checked(flags, message):
    with pytest.raises(UserError, match=message):
        build_config(flag_values=flags)


def test_low_res_needs_a_smaller_size_and_works_on_both_data_paths(folder_dataset, tmp_path, capsys):
    from visionfit.cli import main

    common = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset),
        "--run-dir",
        str(tmp_path / "runs"),
    ]
    assert main([*common, "--low-res-epochs", "2", "--low-res-size", "32"]) == 2
    assert "--low-res-size 32 must be smaller than the input size 32" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made
    loader = ["--data-path", "loader", "--low-res-epochs", "1", "--epochs", "2", "--workers", "0"]
    assert main([*common, *loader, "--no-tensorboard"]) == 2  # cifar10-quick's Linear wants 32 px
    error = capsys.readouterr().err
    assert "cannot take 24x24 input" in error and "another --low-res-size" in error
    airnet = ["--model", "airnet", "--model-arg", "width=8", "--no-tensorboard"]
    assert main([*common, *loader, *airnet]) == 0


def test_a_train_plan_validates_once_and_reads_a_run_config_once(tmp_path, monkeypatch):
    """Validation happens in one place, once per train call; resuming reads config.yaml once."""
    import visionfit.config.validation as validation
    import visionfit.engine.run_folder as run_folder
    from visionfit.cli.train import plan_from_flags
    from visionfit.engine.resume import plan_run

    folder = tmp_path / "run"
    folder.mkdir()
    save_config(build_config(flag_values={"dataset": "cifar10-sample", "epochs": 2}), folder / "config.yaml")
    checks, reads = [], []
    check_counts, read_file = validation._check_counts, run_folder.read_config_file
    monkeypatch.setattr(validation, "_check_counts", lambda config: [checks.append(1), check_counts(config)])
    monkeypatch.setattr(run_folder, "read_config_file", lambda path: [reads.append(path), read_file(path)][1])

    plan = plan_run(None, folder, {"workers": 0})
    assert plan.folder == folder and (plan.config.workers, plan.config.epochs) == (0, 2)
    assert (len(checks), len(reads)) == (1, 1)
    checks.clear(), reads.clear()
    assert plan_from_flags({"log_every": 5}, None, str(folder)).config.log_every == 5  # the CLI's way
    assert (len(checks), len(reads)) == (1, 1)
    checks.clear()
    assert plan_run(None, None, {"epochs": 3}).config.epochs == 3 and len(checks) == 1
    checks.clear()
    assert plan_from_flags({"epochs": 3}, None, "auto").search and len(checks) == 1
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        plan_run(None, folder, {"epochs": 0})
