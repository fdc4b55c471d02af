"""Multi-label runs with the options that keep working for several labels per image: weight
averaging (--ema), the frozen backbone's feature cache, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visionfit.engine.epochs as epochs
from test_multilabel import multilabel_set  # noqa: F401  (the module-scoped fixture)
from test_resume import interrupt_after
from visionfit.cli import main
from visionfit.engine.checkpoint_file import load_checkpoint


def arguments(data: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        *["train", "--labels", str(data / "labels.csv"), "--epochs", "2", "--batch-size", "4"],
        *["--workers", "0", "--precision", "fp32", "--deterministic", "--no-tensorboard"],
        *["--checkpoint-every-steps", "1", "--run-dir", str(run_dir), "--name", name, *extra],
    ]


def frozen(*extra: str) -> list[str]:
    """A pretrained-style run: the backbone frozen, its features cached, the head averaged."""
    model = ["--model", "shufflenet_v2_x0_5", "--input-size", "32", "--freeze", "backbone"]
    return [*model, "--ema", "0.9", "--no-augment", *extra]


def final(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    weights = load_checkpoint(run / "checkpoints" / "last.safetensors").model_state
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, records


def without_timing(records: list[dict]) -> list[dict]:
    timing = ("train_seconds", "train_images_per_second", "test_seconds")
    return [{key: value for key, value in record.items() if key not in timing} for record in records]


def interrupted_and_resumed(
    data: Path, runs: Path, flags: list[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    real = epochs.train_steps
    interrupt_after(monkeypatch, 7)  # mid-epoch 2 (5 steps an epoch: 18 train rows, batch 4)
    assert main(arguments(data, runs, "cut", *flags)) == 130
    monkeypatch.setattr(epochs, "train_steps", real)
    assert main(["train", "--resume", str(runs / "cut")]) == 0
    return runs / "cut"


@pytest.mark.parametrize("flags", [["--model", "cifar10-quick"], frozen()], ids=["plain", "frozen-ema"])
def test_a_resumed_multilabel_run_ends_as_an_uninterrupted_one(multilabel_set, tmp_path, monkeypatch, flags):  # noqa: F811
    runs = tmp_path / "runs"
    assert main(arguments(multilabel_set, runs, "whole", *flags)) == 0
    cut = interrupted_and_resumed(multilabel_set, runs, flags, monkeypatch)
    (whole, whole_records), (resumed, resumed_records) = final(runs / "whole"), final(cut)
    assert whole_records[-1]["test"]["task"] == "multilabel"
    assert sorted(whole) == sorted(resumed) and all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert without_timing(resumed_records) == without_timing(whole_records)
    best = load_checkpoint(cut / "checkpoints" / "best.safetensors").metadata
    assert (
        best["thresholds"]
        == load_checkpoint(runs / "whole" / "checkpoints" / "best.safetensors").metadata["thresholds"]
    )


def test_the_feature_cache_trains_a_multilabel_head_as_the_uncached_path_does(
    multilabel_set,  # noqa: F811
    tmp_path,
    capsys,
):
    runs = tmp_path / "runs"
    assert main(arguments(multilabel_set, runs, "plain", *frozen("--no-feature-cache"))) == 0
    assert main(arguments(multilabel_set, runs, "cached", *frozen())) == 0
    out = capsys.readouterr().out
    assert "computing the frozen backbone's features" in out
    # The label file's val rows are validation data, and the console calls them so.
    assert "9 val)" in out and "val loss" in out and "best val mAP" in out and "test loss" not in out
    (plain, plain_records), (cached, cached_records) = final(runs / "plain"), final(runs / "cached")
    for name in plain:  # the averaged head included (the checkpoint's weights are the average)
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-5)
    for one, other in zip(plain_records, cached_records, strict=True):
        assert other["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)
        assert other["test"]["map"] == pytest.approx(one["test"]["map"], abs=1e-6)
