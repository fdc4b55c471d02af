"""The epoch loop: for each epoch from wherever the run stands — set the freezing, train, test,
record, checkpoint, say how it went. Plain functions over one `TrainingRun`; the loops themselves
(`loops.train_steps`, `loops.evaluate`) do no I/O, this module decides what is printed, logged and
saved between their steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from visionfit.config import TrainConfig
from visionfit.console import EpochProgress, logger
from visionfit.data.batches import SourceBatch, TrainBatches
from visionfit.data.registry import DataSplits
from visionfit.data.transforms import Preprocess
from visionfit.distributed import barrier, broadcast_from_main, count_across, gather_to_main, sum_across
from visionfit.engine import budget
from visionfit.engine.checkpointing import RunCheckpoints
from visionfit.engine.ema import WeightAverage
from visionfit.engine.events import RunEvents
from visionfit.engine.features import FrozenFeatures
from visionfit.engine.loops import Classifier, Evaluation, StepOutput, evaluate, train_steps
from visionfit.engine.metrics import Predictions, best_metric_name, metric_score
from visionfit.engine.multilabel import MultiLabelSums
from visionfit.engine.optim import Optimization
from visionfit.engine.preemption import STOP, stopped
from visionfit.engine.state import TrainState
from visionfit.models.freezing import backbone_frozen, set_backbone_frozen
from visionfit.runtime import Runtime, unwrap_model


@dataclass
class TrainingRun:
    """Everything one run trains with, built once by `training.train`."""

    config: TrainConfig
    runtime: Runtime
    data: DataSplits
    preprocess: Preprocess
    model: nn.Module  # as trained: possibly wrapped by DDP and torch.compile
    batches: TrainBatches
    test_batches: Iterable[SourceBatch]
    optimization: Optimization
    checkpoints: RunCheckpoints
    events: RunEvents
    ema: WeightAverage | None = None  # --ema: the moving average of the weights
    features: FrozenFeatures | None = None  # the frozen backbone's features, with --freeze backbone
    stop_reason: str = ""  # why `fit` stopped, for run.json

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def plain_model(self) -> nn.Module:
        return unwrap_model(self.model)

    @property
    def tested_model(self) -> nn.Module:
        """The weights the run tests and saves: the moving average with --ema, else the model."""
        return self.ema.module if self.ema is not None else self.plain_model

    def on_features(self, epoch: int) -> FrozenFeatures | None:
        """The feature cache, when this epoch trains with the backbone frozen and the run has one."""
        config = self.config
        frozen = backbone_frozen(config.freeze, config.unfreeze_at, epoch)
        return self.features if frozen else None


def fit(
    run: TrainingRun,
    state: TrainState,
    history: list[dict[str, Any]],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation | None:
    """Train the epochs from `state` on. Returns the last epoch's test, with its predictions (every
    test sample's, on rank 0), or None when no epoch was left to train. `on_epoch(record)` sees each
    epoch's record once it is saved; an exception it raises (a pruned trial) ends the run there."""
    evaluation = None
    if state.time_epochs and not state.out_of_time:  # a resumed --time run: the schedule it fitted
        steps_per_epoch = run.batches.batches_per_epoch()
        run.config = budget.reschedule(run.config, run.optimization, steps_per_epoch, state.time_epochs)
    while (reason := stop_reason(run.config, state)) is None:
        apply_freezing(run, state.epoch)
        evaluation = run_epoch(run, state, history)
        signal_number = STOP.agreed_signal() if stop_reason(run.config, state) is None else 0
        if signal_number:  # a signal during the test: the epoch's checkpoint is written, stop here
            raise stopped(signal_number, f"epoch {state.epoch - 1} is saved", run.checkpoints.folder.parent)
        if on_epoch is not None:
            on_epoch(history[-1])
    run.stop_reason = reason
    if not reason.startswith("trained all"):
        logger.info(f"epoch {state.epoch - 1}: {reason}")
    return evaluation


def stop_reason(config: TrainConfig, state: TrainState) -> str | None:
    """Why the run stops before epoch `state.epoch`, or None while it goes on: a function of the
    state alone, so that a resumed run stops where it would have."""
    if state.epoch > config.epochs:
        if config.time is not None:
            return budget.time_stop_reason(config, state)
        return f"trained all {config.epochs} epochs"
    # Tests since the best one (with --test-every K, only every K-th epoch is measured).
    waited = (state.epoch - 1) // config.test_every - state.best_epoch // config.test_every
    if config.patience and state.best_epoch and waited >= config.patience:
        kind = "epoch" if config.test_every == 1 else "tested epoch"
        epochs = f"{waited} {kind}{'s' if waited != 1 else ''}"
        metric = best_metric_name(config.best_metric, config.task)
        return (
            f"early stopping: val {metric} has not improved for {epochs} "
            f"(--patience {config.patience}; best epoch {state.best_epoch})"
        )
    return None


def improves(state: TrainState, score: float) -> bool:
    """Whether an epoch's --best-metric `score` beats the best so far (a checkpoint from before
    --best-metric kept only its best score, in `best_accuracy`)."""
    if state.best_epoch == 0:
        return True
    return score > (state.best_score if state.best_score is not None else state.best_accuracy)


def apply_freezing(run: TrainingRun, epoch: int) -> None:
    """Freeze or unfreeze the backbone as --freeze and --unfreeze-at say for this epoch (a function
    of the epoch alone, so a resumed run gets it right)."""
    config = run.config
    if config.freeze == "none":
        return
    frozen = backbone_frozen(config.freeze, config.unfreeze_at, epoch)
    set_backbone_frozen(run.plain_model, len(run.classes), frozen)
    if epoch == config.unfreeze_at:
        logger.info(f"epoch {epoch}: unfreezing the backbone (--unfreeze-at {epoch})")


def run_epoch(run: TrainingRun, state: TrainState, history: list[dict[str, Any]]) -> Evaluation | None:
    """One epoch: train, test (when due; keeping the predictions in the last epoch), record,
    checkpoint. Returns the test, if there was one."""
    config, epoch = run.config, state.epoch
    train_loss, train_seconds = train_epoch(run, state)
    # --time: whether this epoch must be the last, decided before its test (which keeps predictions)
    runs_out = (
        config.time is not None
        and epoch < config.epochs
        and broadcast_from_main(lambda: budget.runs_out(config, history, train_seconds))
    )
    tested = time.perf_counter()
    evaluation = test_when_due(run, epoch, last=epoch == config.epochs or runs_out)
    held_out = run.data.held_out  # "val" with a validation split: the test split waits for the end
    report = evaluation.sums.report(run.classes) if evaluation is not None else None
    record = {
        "epoch": epoch,
        "step": state.global_step,
        "train_loss": train_loss,
        "lr": run.optimization.lr,
        "train_seconds": train_seconds,
        "train_images_per_second": state.epoch_samples / max(train_seconds, 1e-9),
        "test_seconds": time.perf_counter() - tested,
        "skipped_batches": state.skipped_batches,
        "test": report if held_out == "test" else None,  # None in an epoch without a test (--test-every)
    }
    if held_out == "val":
        record["val"] = report
    history.append(record)
    run.events.epoch(record)
    if config.time is not None:
        steps_per_epoch = run.batches.batches_per_epoch()
        run.config = config = budget.fit_to_budget(
            config, run.optimization, steps_per_epoch, state, history, runs_out=runs_out
        )
    metric = best_metric_name(config.best_metric, config.task)
    score = None if report is None else metric_score(report, metric)
    best = score is not None and improves(state, score)
    if best:
        state.best_accuracy, state.best_epoch, state.best_score = report["accuracy"], epoch, score
    state.finish_epoch()
    if run.runtime.is_main:
        run.checkpoints.save_epoch(run.plain_model, run.optimization, state, record, best, run.ema)
    barrier()  # the other ranks wait for rank 0's checkpoint
    run.checkpoints.restart_clock()
    log_epoch(config, record, best, run.data.held_out_name)
    return evaluation


def test_when_due(run: TrainingRun, epoch: int, *, last: bool) -> Evaluation | None:
    """The epoch's test when one is due: every --test-every epochs, the last epoch (keeping its
    predictions for the end-of-run plots) and, with --time, an epoch after which the schedule is
    fitted (what an epoch costs includes its test, and a fit may end the run there)."""
    config = run.config
    refits = budget.refits_after(config, epoch)
    if epoch % config.test_every and not last and not refits:
        return None
    return test(run, epoch, keep_predictions=(last or refits) and run.data.held_out == "test")


def train_epoch(run: TrainingRun, state: TrainState) -> tuple[float, float]:
    """The training steps of the epoch `state` is in, from the batch it stands at; mid-epoch
    checkpoints when due. Returns the epoch's mean training loss and its seconds of training."""
    config, runtime = run.config, run.runtime
    features = run.on_features(state.epoch)
    # With the backbone frozen and its features cached, only the head trains, on the features.
    model, batches = (features.head, features) if features is not None else (run.model, run.batches)
    steps_in_epoch = batches.batches_per_epoch()
    batches.set_epoch(state.epoch, start_batch=state.batch)
    title = f"epoch {state.epoch}/{config.epochs}"
    progress = EpochProgress(steps_in_epoch, title, enabled=None if runtime.is_main else False)
    progress.bar.update(state.batch)
    loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float32, device=runtime.device)
    started = time.perf_counter() - state.epoch_seconds
    optimization = run.optimization
    steps = train_steps(
        model,
        batches,
        optimization,
        runtime,
        clip_grad_norm=config.clip_grad_norm,
        on_nonfinite=config.on_nan,
    )
    for output in steps:
        state.global_step += 1
        state.batch += 1
        if output.skipped:
            state.skipped_batches += 1
        else:  # sums over all processes: every rank keeps the global numbers
            loss_sum += sum_across(output.loss * output.batch_size)
            state.epoch_samples += count_across(output.batch_size)
            if run.ema is not None:
                run.ema.update(run.plain_model)
        report_step(run, state, output, progress)
        running = (loss_sum / max(1, state.epoch_samples)).item() if progress.wants_postfix() else None
        progress.advance(output.batch_size * runtime.world_size, running)
        # The epoch's own checkpoint follows its last batch, after the test.
        due = state.batch < steps_in_epoch and run.checkpoints.due(state)
        signal_number = STOP.agreed_signal()  # every rank stops at the same step
        if due or signal_number:
            save_position(run, state, loss_sum.item(), time.perf_counter() - started)
        if signal_number:
            saved = f"epoch {state.epoch} up to batch {state.batch} is saved"
            raise stopped(signal_number, saved, run.checkpoints.folder.parent)
    progress.close()
    return (loss_sum / max(1, state.epoch_samples)).item(), time.perf_counter() - started


def save_position(run: TrainingRun, state: TrainState, loss_sum: float, seconds: float) -> None:
    """The mid-epoch `last` checkpoint (rank 0 writes it; the others wait until it is on disk)."""
    state.epoch_loss_sum, state.epoch_seconds = loss_sum, seconds
    if run.runtime.is_main:
        run.checkpoints.save_last(run.plain_model, run.optimization, state, None, run.ema)
    barrier()
    run.checkpoints.restart_clock()


def report_step(run: TrainingRun, state: TrainState, output: StepOutput, progress: EpochProgress) -> None:
    """The tutorial's "every N steps" loss line (and TensorBoard's train/loss), or a skipped batch."""
    epoch = f"epoch {state.epoch}/{run.config.epochs}"
    if output.skipped:
        progress.line(
            f"{epoch}  step {state.global_step}: skipped a batch whose loss is {output.loss.item()} "
            "(--on-nan skip)"
        )
    log_every = run.config.log_every
    if not log_every or state.global_step % log_every or output.skipped:
        return
    loss = (sum_across(output.loss) / run.runtime.world_size).item()
    lr = run.optimization.lr
    run.events.scalar("train/loss", loss, state.global_step)
    run.events.scalar("train/lr", lr, state.global_step)
    progress.line(f"{epoch}  step {state.global_step}  loss {loss:.4f}  lr {lr:.4g}")


def test(run: TrainingRun, epoch: int, *, keep_predictions: bool = False) -> Evaluation:
    """The test set's metrics for the weights after `epoch` (their average with --ema), with the
    run's test-time augmentation: each rank classifies its share, the sums are added up over all
    ranks, and kept predictions are joined on rank 0. While the backbone is frozen, the head
    classifies the cached test features."""
    config, features = run.config, run.on_features(epoch)
    if features is not None and features.tests_on_features:  # the frozen backbone's test features
        classifier = Classifier(features.head_of(run.tested_model), lambda batch: batch, run.runtime)
        batches: Iterable[SourceBatch] = features.test_batches()
    else:
        classifier = Classifier(
            run.tested_model,
            run.batches.normalize,
            run.runtime,
            flip=config.test_time_flip,
            shift=config.test_time_shift,
        )
        batches = run.test_batches
    sums = None
    if config.task == "multilabel":  # thresholds are chosen only on validation data, never on test
        sums = MultiLabelSums(len(run.classes), tune_thresholds=run.data.validation)
    keep = "predictions" if keep_predictions else None
    evaluation = evaluate(classifier, batches, len(run.classes), keep=keep, sums=sums)
    predictions = None
    if evaluation.predictions is not None:
        parts = gather_to_main(evaluation.predictions)
        predictions = Predictions.joined(parts) if parts is not None else None
    return Evaluation(evaluation.sums.across_processes(), predictions)


def log_epoch(config: TrainConfig, record: dict[str, Any], best: bool, split: str = "test") -> None:
    """The epoch's console line; `split` is what the held-out split is called ("val" or "test")."""
    report = record["val" if "val" in record else "test"]
    tested = ""
    if report is not None and report.get("task") == "multilabel":
        tested = (
            f"{split} loss {report['loss']:.4f}  mAP {report['map']:.3f}  "
            f"macro F1 {report['macro']['f1']:.3f}  "
            f"micro F1 {report['micro']['f1']:.3f}  exact {report['exact_match']:.2%}  "
            f"Hamming {report['hamming_loss']:.4f}  "
        )
    elif report is not None:
        tested = (
            f"{split} loss {report['loss']:.4f}  {split} acc {report['accuracy']:.2%}  "
            f"balanced {report['balanced_accuracy']:.2%}  macro F1 {report['macro']['f1']:.3f}  "
            f"ECE {report['calibration']['ece']:.2%}  "
        )
    logger.info(
        f"epoch {record['epoch']}/{config.epochs}  train loss {record['train_loss']:.4f}  {tested}"
        f"({record['train_seconds']:.1f} s, {record['train_images_per_second']:,.0f} img/s)"
        f"{'  *best' if best else ''}"
    )
