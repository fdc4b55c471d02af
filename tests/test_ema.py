"""Weight averaging (--ema): the average's arithmetic and warm-up, the same average on every
process, and a run whose tests, checkpoints, eval and predict all use the averaged weights. (Exact
resume with --ema is in test_resume.py.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

import visionfit
import visionfit.training as training
from conftest import make_folder_dataset
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.engine.ema import WeightAverage, training_tensors, training_weights
from visionfit.engine.loops import Classifier
from visionfit.evaluation import evaluate_checkpoint
from visionfit.inference import InferenceOptions
from visionfit.models.freezing import split_parameters
from visionfit.prediction import picture_pixels
from visionfit.training import train


def small_network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(4, 2))


def test_the_average_follows_the_weights_with_a_warm_up():
    model = small_network()
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    average = WeightAverage(model, decay=0.2)
    assert not average.module.training
    assert not any(parameter.requires_grad for parameter in average.module.parameters())
    decays = []
    for _ in range(4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model.train()(torch.randn(8, 3, 6, 6))  # moves BatchNorm's running statistics
        decay = average.current_decay()
        decays.append(decay)
        average.update(model)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
    assert decays == pytest.approx([1 / 10, 2 / 11, 0.2, 0.2])  # min(DECAY, (1 + n) / (10 + n))
    assert average.updates == 4
    state = average.state_dict()
    assert state.keys() == model.state_dict().keys()  # the model's own names: an ordinary checkpoint
    for name, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    # integer buffers are not averaged: they follow the model
    assert int(state["1.num_batches_tracked"]) == int(model.state_dict()["1.num_batches_tracked"]) == 4


def test_the_average_is_a_copy_and_saves_and_loads_with_the_raw_weights():
    model = small_network()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(average.module[0].weight, model[0].weight)  # untouched until update
    average.update(model)
    extra = training_tensors(model.state_dict())
    assert all("/" in name for name in extra)  # training state, never mistaken for weights
    raw = training_weights({**extra, "optimizer/state": torch.zeros(1)})
    assert raw.keys() == model.state_dict().keys()
    restored = WeightAverage(small_network(seed=1), decay=0.9)
    restored.load(average.state_dict(), average.updates)
    assert restored.updates == 1 and restored.current_decay() == average.current_decay()
    for name, value in average.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


def _average_on_ranks(rank: int, world_size: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = small_network(seed=rank)  # different starts: the average must take rank 0's
        average = WeightAverage(model, decay=0.5)  # made before DDP, as training does
        wrapped = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own share of the data
        for _ in range(3):
            images = torch.randn(4, 3, 6, 6, generator=generator) * (rank + 1)
            optimizer.zero_grad()
            wrapped(images).pow(2).mean().backward()
            optimizer.step()
            average.update(model)
        tensors = {f"average.{name}": value for name, value in average.state_dict().items()}
        tensors.update({f"raw.{name}": value for name, value in model.state_dict().items()})
        save_file({name: value.contiguous().clone() for name, value in tensors.items()}, f"{results}/{rank}")
    finally:
        dist.destroy_process_group()


def test_every_process_holds_the_same_average(tmp_path):
    mp.spawn(_average_on_ranks, args=(2, tempfile.mktemp(dir=tmp_path), str(tmp_path)), nprocs=2)
    first, second = (load_file(str(tmp_path / str(rank))) for rank in range(2))
    averaged = [name for name in first if name.startswith("average.")]
    assert len(averaged) == len(small_network().state_dict())
    for name in averaged:
        assert torch.equal(first[name], second[name]), name
    # what made it necessary: each process's BatchNorm statistics are its own share's
    assert not torch.equal(first["raw.1.running_mean"], second["raw.1.running_mean"])
    assert torch.equal(first["raw.0.weight"], second["raw.0.weight"])  # DDP keeps the parameters equal


def settings(data: Path, run_dir: Path, **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "dataset": "folder",
        "data_dir": str(data),
        "test_fraction": 0.25,
        "model": "airnet",
        "model_args": {"width": 8},
        "epochs": 1,
        "batch_size": 4,
        "ema": 0.9,
        "workers": 0,
        "log_every": 0,
        "tensorboard": False,
        "run_dir": str(run_dir),
        "name": "ema",
    }
    values.update(extra)
    return values


def recorded_averages(monkeypatch: pytest.MonkeyPatch) -> list[WeightAverage]:
    made: list[WeightAverage] = []

    class Recorded(WeightAverage):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(training, "WeightAverage", Recorded)
    return made


def test_a_run_tests_saves_and_predicts_with_the_average(tmp_path, monkeypatch):
    made = recorded_averages(monkeypatch)
    data = make_folder_dataset(tmp_path / "fruit")
    result = train(**settings(data, tmp_path / "runs"))
    (average,) = made
    assert average.updates == result.history[-1]["step"] == 4  # one update per optimizer step
    last, best = (load_checkpoint(path) for path in (result.last_checkpoint, result.best_checkpoint))
    assert last.metadata["config"]["ema"] == best.metadata["config"]["ema"] == 0.9
    for name, value in average.state_dict().items():
        assert torch.equal(last.model_state[name], value) and torch.equal(best.model_state[name], value)
    raw = training_weights(last.extra_tensors)
    assert raw.keys() == average.state_dict().keys() and "training_weights/" not in str(best.extra_tensors)
    assert not torch.equal(raw["head.weight"], average.state_dict()["head.weight"])

    # the epoch's test numbers are the average's: eval of best repeats them
    report = evaluate_checkpoint(result.best_checkpoint, InferenceOptions(device="cpu")).report
    assert report["loss"] == pytest.approx(result.history[-1]["test"]["loss"], rel=1e-5)

    # predict on the run folder classifies with the average, not with the raw weights
    predictor = visionfit.load(result.run_dir, device="cpu")
    pixels = picture_pixels(next(data.rglob("*.png")), predictor.preprocess).unsqueeze(0)
    model = predictor.model

    def logits(network: nn.Module) -> torch.Tensor:
        return Classifier(network, model.prepare, model.runtime, flip=model.flip, shift=model.shift)(pixels)

    torch.testing.assert_close(model.logits(pixels), logits(average.module))
    with torch.no_grad():  # the same network with the raw weights answers differently
        average.module.load_state_dict(raw)
    assert not torch.allclose(model.logits(pixels), logits(average.module))


def test_with_a_frozen_backbone_the_average_moves_only_the_head(tmp_path, monkeypatch):
    made = recorded_averages(monkeypatch)
    data = make_folder_dataset(tmp_path / "fruit")
    options = settings(data, tmp_path / "runs", model="resnet18", model_args={}, input_size=32)
    result = train(**options, freeze="backbone", precision="fp32")
    (average,) = made
    last = load_checkpoint(result.last_checkpoint)
    raw = training_weights(last.extra_tensors)
    head, backbone = split_parameters(average.module, 3)
    names = {id(parameter): name for name, parameter in average.module.named_parameters()}
    for parameter in backbone:  # frozen: the average of equal weights is those weights, exactly
        assert torch.equal(parameter, raw[names[id(parameter)]])
    assert torch.equal(last.model_state["bn1.running_mean"], raw["bn1.running_mean"])  # eval-mode BN
    assert all(not torch.equal(parameter, raw[names[id(parameter)]]) for parameter in head)
