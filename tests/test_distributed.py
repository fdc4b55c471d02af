"""Several processes (torchrun, gloo on CPU): sharding, reduced metrics, rank-0-only writes, and a
two-process run that matches a one-process run. The longer runs (a CIFAR-10 slice, two "nodes",
killed ranks and elastic restarts) are in test_distributed_slow.py."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visionfit.cli import main
from visionfit.config.validation import check_setup
from visionfit.data.loaders import EpochBatchSampler
from visionfit.data.order import EpochOrder, shard
from visionfit.distributed import all_finite, broadcast_from_main, count_across
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.engine.metrics import MetricSums
from visionfit.engine.resume import restart_target
from visionfit.errors import UserError
from visionfit.launch import strip_nproc, torchrun_arguments

SOURCE = str(Path(__file__).resolve().parents[1] / "src")


def test_shards_are_disjoint_and_together_are_the_whole_batch():
    items = list(range(11))
    for world_size in (1, 2, 3, 4):
        parts = [shard(items, rank, world_size) for rank in range(world_size)]
        assert sorted(item for part in parts for item in part) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(torch.arange(6), 1, 2).tolist() == [1, 3, 5]


def test_each_rank_gets_its_share_of_the_same_global_batches():
    def batches(rank: int, world_size: int, start: int = 0) -> list[list[tuple[int, int, int]]]:
        sampler = EpochBatchSampler(
            EpochOrder(23, 8, shuffle=True, seed=3, drop_last=False, rank=rank, world_size=world_size)
        )
        sampler.set_epoch(2, start_batch=start)
        assert len(sampler) == sampler.batches_per_epoch() - start
        return list(sampler)

    single = batches(0, 1)
    ranks = [batches(rank, 2) for rank in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for index, global_batch in enumerate(single):
        # Same samples with the same augmentation seeds, whatever the number of processes.
        assert sorted(ranks[0][index] + ranks[1][index]) == sorted(global_batch)
        assert not set(ranks[0][index]) & set(ranks[1][index])
    assert batches(1, 2, start=1) == ranks[1][1:]  # exact resume at a batch


def test_a_last_batch_too_small_to_share_is_dropped():
    # 17 = 2 x 8 + 1: one image cannot be split over 2 processes; 3 processes, 18 = 2 x 8 + 2 too.
    assert (
        EpochBatchSampler(EpochOrder(17, 8, shuffle=False, seed=0, drop_last=False)).batches_per_epoch() == 3
    )
    assert (
        EpochBatchSampler(
            EpochOrder(17, 8, shuffle=False, seed=0, drop_last=False, world_size=2)
        ).batches_per_epoch()
        == 2
    )
    assert (
        EpochBatchSampler(
            EpochOrder(18, 8, shuffle=False, seed=0, drop_last=False, world_size=2)
        ).batches_per_epoch()
        == 3
    )


def test_global_batch_must_divide_over_the_processes_and_sync_bn_needs_gpus():
    from visionfit.config import TrainConfig

    def check(batch_size: int, sync_bn: bool, world_size: int) -> None:
        config = TrainConfig(batch_size=batch_size, sync_bn=sync_bn)
        check_setup(config, device_type="cpu", world_size=world_size, input_size=32)

    check(64, False, 4)
    with pytest.raises(UserError, match="--batch-size 10 is the global batch"):
        check(10, False, 4)
    with pytest.raises(UserError, match="--sync-bn needs GPUs"):
        check(64, True, 4)
    check(10, True, 1)  # one process: plain BatchNorm


def test_nproc_is_taken_out_of_the_command_each_process_runs():
    arguments = ["--epochs", "2", "--nproc", "4", "--name", "x", "--nproc=3"]
    assert strip_nproc(arguments) == ["--epochs", "2", "--name", "x"]
    command = torchrun_arguments(2, ["--epochs", "1"])
    assert command[:3] == ["--standalone", "--nproc-per-node", "2"]
    assert command[3:] == ["-m", "visionfit", "train", "--epochs", "1"]


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--nproc", "2", "--epochs", "1"]) == 2
    assert "under torchrun" in capsys.readouterr().err


def test_an_elastic_restart_finds_the_first_attempts_run_again(monkeypatch, tmp_path):
    from visionfit.config import TrainConfig

    config = TrainConfig(run_dir=str(tmp_path), name="job")
    assert restart_target(None, config) is None  # first attempt: a new run
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert restart_target(None, config) == "auto"  # its folder holds no run yet
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.yaml").write_text("epochs: 1\n")
    assert restart_target(None, config) == tmp_path / "job"
    assert restart_target("auto", config) == "auto"  # an explicit --resume wins


def _collectives(rank: int, world_size: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # Each rank holds the sums of its own share of 7 samples (rank r: samples r, r+2, ...).
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(7, 3, generator=generator)
        targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
        mine = MetricSums(3)
        part = shard(torch.arange(7), rank, world_size)
        mine.update(logits[part], targets[part], loss_sum=float(len(part)))
        total = mine.across_processes()
        whole = MetricSums(3)
        whole.update(logits, targets, loss_sum=7.0)
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        try:
            broadcast_from_main(lambda: (_ for _ in ()).throw(UserError("bad config")))
            error = ""
        except UserError as raised:
            error = str(raised)
        outcome = {
            "confusion_equal": torch.equal(total.confusion, whole.confusion),
            "loss_sum": total.loss_sum,
            "top5": (total.top5_correct, whole.top5_correct),
            "count": count_across(len(part)),
            "finite": all_finite(loss),
            "error": error,
            "value": broadcast_from_main(lambda: {"rank": rank}),
        }
        Path(results, f"{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def test_sums_errors_and_decisions_are_shared_across_two_processes(tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_collectives, args=(2, init_file, str(tmp_path)), nprocs=2)
    for rank in range(2):
        outcome = json.loads((tmp_path / f"{rank}.json").read_text())
        assert outcome["confusion_equal"]
        assert outcome["loss_sum"] == 7.0 and outcome["count"] == 7
        assert outcome["top5"][0] == outcome["top5"][1]
        assert outcome["finite"] is False  # rank 1's NaN stops both
        assert outcome["error"] == "bad config"  # rank 0's user error reaches every rank
        assert outcome["value"] == {"rank": 0}


def _train_arguments(data: Path, run_dir: Path, name: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--test-fraction",
        "0.25",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--checkpoint-every-steps",
        "2",
        # fp32 everywhere: on CPUs with AVX512-BF16 `auto` picks bf16, whose rounding differs with
        # the per-process batch and would hide what this compares.
        "--precision",
        "fp32",
        "--run-dir",
        str(run_dir),
        "--name",
        name,
    ]


def test_two_processes_train_like_one(tmp_path, monkeypatch, capfd):
    """Same seed and global batch: the same losses, metrics and weights (up to float noise), one
    set of files written by rank 0, and a checkpoint without DDP's `module.` prefix. The end-of-run
    mistakes are the whole test set's, with the right files (ranks once wrote their own shard's,
    picked from the full test set by shard-local positions)."""
    from test_resume import make_noisy_dataset

    data = make_noisy_dataset(tmp_path / "noisy", per_class=12)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])))
    assert main(_train_arguments(data, tmp_path / "runs", "one")) == 0
    assert main([*_train_arguments(data, tmp_path / "runs", "two"), "--nproc", "2"]) == 0
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    records = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)
    ]
    assert [record["epoch"] for record in records[1]] == [1, 2]  # rank 0 alone wrote each epoch once
    for single, double in zip(*records, strict=True):
        assert single["test"]["count"] == double["test"]["count"] == 9  # every test image once
        assert single["test"]["confusion_matrix"] == double["test"]["confusion_matrix"]
        assert double["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
        assert double["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-4)
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    weights = [load_checkpoint(run / "checkpoints" / "last.safetensors").model_state for run in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5)
    assert "2 processes; global batch 8 (4 per process)" in capfd.readouterr().out
    mistakes = [json.loads((run / "mistakes.json").read_text()) for run in (one, two)]
    assert mistakes[0], "the noisy data should leave some test images misclassified"
    assert [(m["source"], m["true"], m["predicted"]) for m in mistakes[1]] == [
        (m["source"], m["true"], m["predicted"]) for m in mistakes[0]
    ]
    assert all(Path(mistake["source"]).parent.name == mistake["true"] for mistake in mistakes[1])


def test_nproc_with_a_batch_that_does_not_divide_fails_before_starting_processes(tmp_path, capsys):
    code = main(
        [
            "train",
            "--dataset",
            "cifar10-sample",
            "--batch-size",
            "9",
            "--nproc",
            "2",
            "--run-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert (
        "--batch-size 9 is the global batch and must divide evenly over 2 processes"
        in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
