"""`--time`: a budget for the epochs. After the first epoch the number of epochs is set so that the
learning-rate schedule ends when the budget does (Ultralytics' `time=`), and set again after the
first epoch of each slower phase (the first unfrozen epoch of --freeze backbone, the first
full-size epoch after --low-res-epochs), whose cost the first epoch cannot tell. If epochs grow
slower still, the run stops after the last one that fits. Every decision is a function of the
epochs' recorded seconds, made on rank 0 and kept in the loop state, so a resumed run and every
process follow the same schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from visionfit.config import TrainConfig
from visionfit.config.validation import parse_duration
from visionfit.console import logger
from visionfit.distributed import broadcast_from_main
from visionfit.engine.optim import Optimization, lr_factor
from visionfit.engine.state import TrainState

# An epoch may run this much over its share of the budget before the run stops early: the fitted
# number of epochs is a floor, and epoch times jitter by a few per cent.
OVERRUN = 1.05


def epoch_cost(record: dict[str, Any]) -> float:
    """What an epoch cost: its training and its held-out evaluation."""
    return float(record["train_seconds"]) + float(record["test_seconds"])


def refits_after(config: TrainConfig, epoch: int) -> bool:
    """Whether the schedule is fitted after `epoch`: the first, and the first of a slower phase."""
    if config.time is None:
        return False
    unfreezes = config.freeze == "backbone" and epoch == config.unfreeze_at
    full_size = config.low_res_epochs > 0 and epoch == config.low_res_epochs + 1
    return epoch == 1 or unfreezes or full_size


def fitted_epochs(config: TrainConfig, history: list[dict[str, Any]]) -> tuple[int, str]:
    """After the epoch `history` ends with: the epochs that fit in --time if the rest cost what it
    did (at least the epochs done), and the line that says so."""
    budget = parse_duration(str(config.time))
    last = history[-1]
    spent = sum(epoch_cost(record) for record in history)
    cost = max(epoch_cost(last), 1e-9)
    # 1e-9: a budget of exactly N epochs fits N of them despite rounding
    more = max(0, math.floor((budget - spent) / cost + 1e-9))
    epochs = int(last["epoch"]) + more
    return epochs, (
        f"--time {config.time}: epoch {last['epoch']} took {epoch_cost(last):.1f} s ({spent:.0f} s of "
        f"epochs so far), so {epochs} epoch{'s' if epochs != 1 else ''} fit; the learning-rate "
        f"schedule now ends with epoch {epochs}"
    )


def reschedule(
    config: TrainConfig, optimization: Optimization, steps_per_epoch: int, epochs: int
) -> TrainConfig:
    """`config` with `epochs`, and the optimizer's per-step schedule stretched or shrunk to end with
    them: the steps taken keep their learning rates; the next step's is the new schedule's at its
    step (setting it is idempotent, so a resumed run that reschedules again changes nothing)."""
    config = dataclasses.replace(config, epochs=epochs)
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    schedule = config.scheduler
    scheduler = optimization.scheduler
    scheduler.lr_lambdas = [
        lambda step: lr_factor(step, total_steps, warmup_steps, schedule) for _ in scheduler.lr_lambdas
    ]
    step = scheduler.last_epoch
    for group, base_lr, factor in zip(
        optimization.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * factor(step)
    return config


def fit_to_budget(
    config: TrainConfig,
    optimization: Optimization,
    steps_per_epoch: int,
    state: TrainState,
    history: list[dict[str, Any]],
    *,
    runs_out: bool,
) -> TrainConfig:
    """After an epoch of a --time run (`state.epoch`, the last of `history`): the run's config
    ending now when another epoch would overrun the budget (`runs_out`), or after the first epoch and
    the first of a slower phase with the epochs that fit and the schedule rescheduled to end with
    them; kept in `state` for a resumed run. The fit is rank 0's, given to every process."""
    epoch = state.epoch
    if runs_out:
        state.time_epochs, state.out_of_time = epoch, True
        return dataclasses.replace(config, epochs=epoch)  # no step is left to schedule
    if not refits_after(config, epoch):
        return config
    state.time_epochs, line = broadcast_from_main(lambda: fitted_epochs(config, history))
    logger.info(line)
    return reschedule(config, optimization, steps_per_epoch, state.time_epochs)


def runs_out(config: TrainConfig, history: list[dict[str, Any]], train_seconds: float) -> bool:
    """Whether the epoch that has just trained for `train_seconds` must be the last one although
    --epochs are left: it and one more like it, with a test as long as the last one, would overrun
    the budget (grace: OVERRUN)."""
    if config.time is None or not history:
        return False
    tested = [float(record["test_seconds"]) for record in history if record.get("test_seconds")]
    test_seconds = tested[-1] if tested else 0.0
    spent = sum(epoch_cost(record) for record in history) + train_seconds + test_seconds
    return spent + train_seconds + test_seconds > parse_duration(str(config.time)) * OVERRUN


def time_stop_reason(config: TrainConfig, state: TrainState) -> str:
    """Why a --time run stopped after its last epoch (run.json's `stopped`)."""
    if state.out_of_time:
        return (
            f"time budget {config.time}: another epoch would overrun it, stopped after epoch {config.epochs}"
        )
    if config.epochs == 1:
        return f"time budget {config.time}: trained the one epoch that fits"
    return f"time budget {config.time}: trained all {config.epochs} epochs that fit"
