"""--freeze backbone with the feature cache: the head trains on features computed once, with the
results of the uncached frozen path, kept across runs, exact on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visionfit.engine.epochs as epochs
from visionfit.cli import main
from visionfit.engine.checkpoint_file import load_checkpoint


def arguments(data: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        *["train", "--dataset", "folder", "--data-dir", str(data), "--model", "shufflenet_v2_x0_5"],
        *[
            "--input-size",
            "32",
            "--freeze",
            "backbone",
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--precision",
            "fp32",
        ],
        *["--no-tensorboard", "--run-dir", str(run_dir), "--name", name, "--deterministic", *extra],
    ]


def final(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    weights = load_checkpoint(run / "checkpoints" / "last.safetensors").model_state
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, records


def plain_and_cached_records(runs: Path) -> list[tuple[dict, dict]]:
    """Check that RUNS/cached (the feature cache) ends with RUNS/plain's weights, and pair their
    epoch records for the caller's own comparisons."""
    (plain, plain_records), (cached, cached_records) = final(runs / "plain"), final(runs / "cached")
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-5)
    return list(zip(plain_records, cached_records, strict=True))


def test_cached_features_train_the_head_as_the_uncached_path_does(folder_dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(arguments(folder_dataset, runs, "plain", "--no-augment", "--no-feature-cache")) == 0
    assert "frozen backbone's features" not in capsys.readouterr().out
    assert main(arguments(folder_dataset, runs, "cached", "--no-augment")) == 0
    assert "computing the frozen backbone's features" in capsys.readouterr().out
    for one, other in plain_and_cached_records(runs):
        assert other["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert other["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)
        assert other["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    # A second run over the same pictures and backbone reads the features from the cache file.
    assert main(arguments(folder_dataset, runs, "again", "--no-augment")) == 0
    assert "computing the frozen backbone's features" not in capsys.readouterr().out
    torch.testing.assert_close(final(runs / "again")[0], final(runs / "cached")[0], rtol=0, atol=0)


def test_augmented_views_are_drawn_per_epoch_and_repeat_with_the_seed(folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    assert main(arguments(folder_dataset, runs, "eval-view")) == 0
    assert main(arguments(folder_dataset, runs, "views", "--feature-views", "2")) == 0
    assert main(arguments(folder_dataset, runs, "views-again", "--feature-views", "2")) == 0
    eval_view, views, again = (final(runs / name)[0] for name in ("eval-view", "views", "views-again"))
    assert not torch.equal(views["fc.weight"], eval_view["fc.weight"])  # the augmented views were used
    assert torch.equal(views["fc.weight"], again["fc.weight"])
    assert all(torch.equal(views[name], eval_view[name]) for name in views if not name.startswith("fc."))


def test_unfreezing_switches_to_the_full_network(folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    extra = ["--no-augment", "--unfreeze-at", "2", "--keep-every-epoch"]
    assert main(arguments(folder_dataset, runs, "plain", *extra, "--no-feature-cache")) == 0
    assert main(arguments(folder_dataset, runs, "cached", *extra)) == 0
    (plain, _), (cached, _) = final(runs / "plain"), final(runs / "cached")
    first = load_checkpoint(runs / "cached" / "checkpoints" / "epoch_001.safetensors").model_state
    assert not torch.equal(cached["conv1.0.weight"], first["conv1.0.weight"])  # the backbone trained
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-3, atol=1e-4)


def test_a_resumed_cached_run_ends_as_an_uninterrupted_one(folder_dataset, tmp_path, monkeypatch):
    from test_resume import interrupt_after

    runs = tmp_path / "runs"
    command = arguments(
        folder_dataset, runs, "whole", "--feature-views", "1", "--checkpoint-every-steps", "1"
    )
    assert main(command) == 0
    real = epochs.train_steps
    interrupt_after(monkeypatch, 4)  # killed in epoch 1 (6 steps an epoch), mid-epoch
    cut = arguments(folder_dataset, runs, "cut", "--feature-views", "1", "--checkpoint-every-steps", "1")
    assert main(cut) == 130  # interrupted
    monkeypatch.setattr(epochs, "train_steps", real)
    assert main(["train", "--resume", str(runs / "cut")]) == 0
    (whole, whole_records), (cut, cut_records) = final(runs / "whole"), final(runs / "cut")
    assert all(torch.equal(whole[name], cut[name]) for name in whole)
    assert [record["test"]["loss"] for record in whole_records] == [
        record["test"]["loss"] for record in cut_records
    ]


def test_with_ema_the_cached_path_tests_the_averaged_head(folder_dataset, tmp_path):
    runs = tmp_path / "runs"
    extra = ["--no-augment", "--ema", "0.9"]
    assert main(arguments(folder_dataset, runs, "plain", *extra, "--no-feature-cache")) == 0
    assert main(arguments(folder_dataset, runs, "cached", *extra)) == 0
    for one, other in plain_and_cached_records(runs):
        assert other["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)


def test_the_balanced_draw_is_the_same_on_cached_features(folder_dataset, tmp_path):
    runs, balanced = tmp_path / "runs", ("--no-augment", "--sampler", "balanced", "--epochs", "1")
    assert main(arguments(folder_dataset, runs, "plain", *balanced, "--no-feature-cache")) == 0
    assert main(arguments(folder_dataset, runs, "cached", *balanced)) == 0
    for one, other in plain_and_cached_records(runs):
        assert other["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
