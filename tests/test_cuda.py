"""On a CUDA GPU (skipped elsewhere; `benchmarks/device_check.sh` runs them when one is lent):
training on the device with its precision and layout, and predictions that match the CPU's."""

from __future__ import annotations

import json

import pytest
import torch

from visionfit.cli import main

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


def test_training_on_the_gpu_uses_its_precision_and_learns(tmp_path, capsys):
    command = ["train", "--dataset", "cifar10-sample", "--epochs", "2", "--model-arg", "width=16"]
    command += ["--device", "cuda", "--run-dir", str(tmp_path), "--name", "gpu", "--no-tensorboard"]
    assert main(command) == 0
    out = capsys.readouterr().out
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert f"on cuda:0 ({expected}, channels_last" in out
    record = json.loads((tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test"]["accuracy"] > 0.25  # ten classes: chance is 0.10


def test_predictions_on_the_gpu_match_the_cpu(tmp_path, capsys):
    import visionfit

    command = ["train", "--dataset", "cifar10-sample", "--epochs", "1", "--model-arg", "width=16"]
    assert main([*command, "--run-dir", str(tmp_path), "--name", "r", "--no-tensorboard"]) == 0
    from visionfit.data.registry import load_data

    images = load_data("cifar10-sample", None).test.images[:64]
    on_gpu = visionfit.load(tmp_path / "r", device="cuda", precision="fp32").predict(images, top_k=1)
    on_cpu = visionfit.load(tmp_path / "r", device="cpu", precision="fp32").predict(images, top_k=1)
    agree = sum(gpu[0][0] == cpu[0][0] for gpu, cpu in zip(on_gpu, on_cpu, strict=True))
    assert agree >= 63
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu[0][1] == pytest.approx(cpu[0][1], abs=1e-3)
