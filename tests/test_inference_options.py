"""One `InferenceOptions` for every way a model runs: the three-valued model-code policy, options
checked once, the checkpoint's own data opened by the checkpoint, and library calls that print
nothing unless the caller configures logging."""

from __future__ import annotations

import logging

import pytest

import visionfit
from conftest import make_folder_dataset
from serve_support import CLASSES, PREPROCESS, custom_checkpoint
from visionfit.data.registry import SplitShares, load_data
from visionfit.engine.checkpoint_file import checkpoint_metadata, load_checkpoint, save_checkpoint
from visionfit.errors import UserError
from visionfit.evaluation import evaluate_checkpoint
from visionfit.inference import InferenceOptions, load_for_inference
from visionfit.models import ModelRecord, create_model


def test_model_code_is_refused_run_only_as_recorded_or_trusted(tmp_path):
    path = custom_checkpoint(tmp_path)
    with pytest.raises(UserError, match="model code .*--trust-model-code"):
        load_for_inference(path, model_code="refuse")  # even the very file training used
    assert load_for_inference(path, device="cpu").classes == CLASSES  # "recorded", the default
    with open(tmp_path / "tiny.py", "a") as file:
        file.write("\n# changed\n")
    with pytest.raises(UserError, match="not the one training used"):
        load_for_inference(path, InferenceOptions(device="cpu"))
    assert visionfit.load(path, device="cpu", model_code="trust").classes == CLASSES


def test_options_are_checked_where_they_are_made(tmp_path):
    with pytest.raises(UserError, match="model_code must be one of refuse, recorded, trust"):
        InferenceOptions(model_code="yes")
    with pytest.raises(UserError, match="batch size"):
        InferenceOptions(batch_size=0)
    with pytest.raises(TypeError, match="unknown inference option 'trust_model_code'"):
        visionfit.load(tmp_path / "any.safetensors", trust_model_code=True)


def test_eval_reads_the_checkpoints_own_split_and_prints_nothing(tmp_path, capsys, monkeypatch):
    data_dir = make_folder_dataset(tmp_path / "fruit", per_class=8)
    model = create_model("cifar10-quick", len(CLASSES))
    config = {"dataset": "folder", "data_dir": str(data_dir), "val_fraction": 0.25, "seed": 3}
    metadata = checkpoint_metadata(
        ModelRecord("cifar10-quick", len(CLASSES)), CLASSES, PREPROCESS, config=config
    )
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model.state_dict(), metadata)
    checkpoint = load_checkpoint(path)
    own, expected = (
        checkpoint.training_data(),
        load_data("folder", str(data_dir), shares=SplitShares(0.25, seed=3)),
    )
    names = [own.test.name(index) for index in range(len(own.test))]
    assert names == [expected.test.name(index) for index in range(len(expected.test))] and len(names) == 6
    assert checkpoint.preprocess == PREPROCESS

    logger = logging.getLogger("visionfit")  # as a library user finds it: nobody configured it
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    one_by_one = evaluate_checkpoint(path, InferenceOptions(device="cpu", precision="fp32", batch_size=1))
    whole = evaluate_checkpoint(path, InferenceOptions(device="cpu", precision="fp32"))
    assert capsys.readouterr().out == ""
    assert one_by_one.report["confusion_matrix"] == whole.report["confusion_matrix"]
    assert sum(map(sum, whole.report["confusion_matrix"])) == 6  # the held-out quarter of 24
    assert whole.report["loss"] == pytest.approx(one_by_one.report["loss"], rel=1e-5)
