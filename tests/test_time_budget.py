"""--time: after the first epoch the schedule is fitted to the budget (again after the first epoch
of a slower phase); a run whose epochs grow slower stops early; it stops cleanly and says why, and
a timed run resumes bit-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import visionfit.engine.epochs as epochs
from test_resume import Interrupt, assert_same_run, interrupt_after, make_noisy_dataset, settings
from visionfit.config import build_config
from visionfit.config.validation import parse_duration
from visionfit.engine.budget import time_stop_reason
from visionfit.engine.state import TrainState
from visionfit.errors import UserError
from visionfit.training import train


class FakeClock:
    """`time` for the epoch loop: every reading is `tick` seconds after the last, so an epoch costs
    exactly 2 ticks (one for training, one for its test) whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0
        self.tick = 1.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(epochs, "time", fake)
    return fake


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_noisy_dataset(tmp_path_factory.mktemp("noisy-time") / "data")


def timed(data: Path, run_dir: Path, **extra: Any) -> dict[str, Any]:
    return settings(
        data, run_dir, epochs=50, checkpoint_every_steps=0, log_every=0, lr=0.01, tensorboard=False, **extra
    )


def stopped(run_dir: Path) -> str:
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished"
    return status["stopped"]


def test_durations():
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration("2h") == 7200
    assert parse_duration("90s") == 90 and parse_duration("2") == 120 and parse_duration("0.5h") == 1800
    for bad in ("15x", "m", "15m3", "1..5m"):
        with pytest.raises(UserError, match="--time"):
            parse_duration(bad)
    for bad in ("0m", "-5m", "inf", "nan"):
        with pytest.raises(UserError, match="--time"):
            build_config(flag_values={"time": bad})
    one = build_config(flag_values={"time": "5m", "epochs": 1})
    assert time_stop_reason(one, TrainState()) == "time budget 5m: trained the one epoch that fits"
    late = time_stop_reason(one, TrainState(out_of_time=True))
    assert late == "time budget 5m: another epoch would overrun it, stopped after epoch 1"


def test_a_slower_phase_refits_and_slower_epochs_stop_early(noisy, tmp_path, clock):
    def slower(record: dict[str, Any]) -> None:
        clock.tick = 2.0  # epochs after the first cost 4 s

    # --low-res-epochs 1: epoch 2 is the first at full size, so the schedule is fitted again there
    # (2 s + 4 s spent, 12 s budget: one more 4 s epoch fits).
    small_airnet = {"model": "airnet", "model_args": {"width": 4}}  # a network that takes 24 px too
    refit = timed(noisy, tmp_path, time="12s", name="refit", low_res_epochs=1, **small_airnet)
    refitted = train(**refit, on_epoch=slower)
    assert len(refitted.history) == 3
    assert stopped(refitted.run_dir) == "time budget 12s: trained all 3 epochs that fit"
    assert math.isclose(refitted.history[-1]["lr"], 0.0, abs_tol=1e-12)
    # Without a new phase the first fit stands (6 epochs); the run stops when the next would overrun.
    clock.tick = 1.0
    late = train(**timed(noisy, tmp_path, time="12s", name="late"), on_epoch=slower)
    assert len(late.history) == 3 and late.history[-1]["test"] is not None
    assert stopped(late.run_dir) == ("time budget 12s: another epoch would overrun it, stopped after epoch 3")


def test_the_schedule_ends_with_the_budget_and_resumes_bit_identical(
    noisy, tmp_path, clock, monkeypatch, visionfit_messages
):
    values = timed(noisy, tmp_path, time="7s")
    result = train(**values, name="reference")
    assert [record["epoch"] for record in result.history] == [1, 2, 3]  # 7 s // 2 s an epoch
    assert stopped(result.run_dir) == "time budget 7s: trained all 3 epochs that fit"
    assert any(line.startswith("--time 7s: epoch 1 took 2.0 s") for line in visionfit_messages)
    # The cosine schedule was shrunk from 50 epochs to 3: it ends at 0 after the last step.
    assert math.isclose(result.history[-1]["lr"], 0.0, abs_tol=1e-12)
    assert result.history[0]["lr"] > 0.01 * 0.75  # after epoch 1 of 50, before the refit: near the peak
    with monkeypatch.context() as patch:
        interrupt_after(patch, 8)  # in the second epoch, after the first fitted the schedule
        with pytest.raises(Interrupt):
            train(**values, name="interrupted")
    train(resume=tmp_path / "interrupted")
    assert_same_run(result.run_dir, tmp_path / "interrupted")
    assert stopped(tmp_path / "interrupted") == stopped(result.run_dir)
