"""What a training run does at its end, once the epochs are over: the test of its weights (with a
validation split, the best weights on the test split, measured once), the temperature fitted on
validation data, the end-of-run plots, TensorBoard's hparams summary, run.json's finished status,
the last table and the one-line summary; and `TrainResult`, what a finished run hands back.

`training.run_training` wires a run and calls `finish` at its end; nothing here imports `training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig
from visionfit.console import logger
from visionfit.data.registry import DataSplits
from visionfit.data.samples import Samples
from visionfit.engine.checkpointing import LAST
from visionfit.engine.epochs import TrainingRun, test
from visionfit.engine.loops import Evaluation
from visionfit.engine.metrics import best_metric_name, format_report
from visionfit.engine.multilabel import format_multilabel_report, multilabel_thresholds_line
from visionfit.engine.run_folder import now, write_status
from visionfit.engine.state import TrainState


@dataclass
class TrainResult:
    """What a finished run produced: where it is, its per-epoch records and its best epoch."""

    run_dir: Path
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    # With a validation split: the test split's report of the best weights, measured once at the end
    # (each epoch's record then holds "val"). Without one, None: each epoch's record holds "test".
    test: dict[str, Any] | None = None

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.safetensors"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    @property
    def best(self) -> dict[str, Any]:
        return next(record for record in self.history if record["epoch"] == self.best_epoch)


def calibrate_on_validation(run: TrainingRun) -> None:
    """With a validation split in the held-out place (the epochs' view of data that have one) and
    --calibrate (the default): the temperature of the best and last checkpoints, fitted on it."""
    if not run.config.calibrate or not run.data.validation:
        return
    from visionfit.calibrating import MULTILABEL_NO_TEMPERATURE, calibrate_run_checkpoints

    if run.config.task == "multilabel":
        logger.info(f"calibration of a multi-label run: {MULTILABEL_NO_TEMPERATURE}")
        return

    folder = run.checkpoints.folder
    result = calibrate_run_checkpoints(
        [folder / "best.safetensors", run.checkpoints.last],
        run.data.test,
        "validation split",
        device=run.config.device,
    )
    if result is not None:
        logger.info(
            f"calibrated on the validation split: temperature {result.temperature:.3f}, ECE "
            f"{result.before['ece']:.2%} -> {result.after['ece']:.2%} (--no-calibrate to skip)"
        )


def finish(
    run: TrainingRun,
    state: TrainState,
    history: list[dict[str, Any]],
    last_test: Evaluation | None,
    data: DataSplits,
) -> TrainResult:
    """The test of the run's weights (with a validation split apart from test: the best weights, on
    the test split, measured once here), the end-of-run plots (rank 0), the hparams summary, the
    finished status and the test's table."""
    config, run_dir, classes = run.config, run.checkpoints.folder.parent, run.data.classes
    held_out = run.data.held_out
    final_test = None
    if held_out == "val":
        from visionfit.engine.heldout import test_best_weights

        last_test = test_best_weights(run, data.test)  # every rank
        final_test = last_test.sums.report(classes)
    elif last_test is None:  # resumed after its last epoch: test the final weights again (every rank)
        last_test = test(run, config.epochs, keep_predictions=True)
    best = next(record for record in history if record["epoch"] == state.best_epoch)
    result = TrainResult(run_dir, classes, history, state.best_epoch, final_test)
    if not run.runtime.is_main:
        run.events.close()
        return result
    calibrate_on_validation(run)  # a multi-label run says it gets no temperature
    # The plots' confusion matrix and mistakes are the test's: the last epoch's, or the final one's.
    plotted = history if final_test is None else [*history[:-1], {**history[-1], "test": final_test}]
    write_end_of_run(run, state, plotted, last_test, best, data)
    if final_test is not None:
        logger.info(format_report(final_test, classes))
    else:
        logger.info(final_table(config, history[-1]["test"], best["test"], classes))
    headline = (
        f"mAP {best[held_out]['map']:.3f}"
        if "map" in best[held_out]
        else f"accuracy {best[held_out]['accuracy']:.2%}"
    )
    chosen = f"best {run.data.held_out_name} {headline} at epoch {state.best_epoch}; "
    if final_test is not None:
        chosen += f"test accuracy of those weights {final_test['accuracy']:.2%} (measured once, now); "
    logger.info(
        f"{chosen}checkpoints in {run.checkpoints.folder}; "
        f"view curves with: tensorboard --logdir {Path(config.run_dir)}"
    )
    return result


def write_end_of_run(
    run: TrainingRun,
    state: TrainState,
    history: list[dict[str, Any]],
    last_test: Evaluation,
    best: dict[str, Any],
    data: DataSplits,
) -> None:
    """Rank 0: the plots, TensorBoard's hparams summary and run.json's finished status."""
    config, run_dir = run.config, run.checkpoints.folder.parent
    held_out, final = run.data.held_out, history[-1]["test"]
    step = state.global_step
    write_end_plots(run, run_dir, history, last_test.predictions, data.test, step)
    hyperparameters = {
        key: value for key, value in config.to_dict().items() if key not in ("run_dir", "name")
    }
    summary = {
        f"hparam/{held_out}_accuracy": best[held_out]["accuracy"],
        f"hparam/{held_out}_loss": best[held_out]["loss"],
        "hparam/best_epoch": float(state.best_epoch),
    }
    tested: dict[str, Any] = {"best_chosen_on": held_out}
    if held_out == "val":
        summary.update({"hparam/test_accuracy": final["accuracy"], "hparam/test_loss": final["loss"]})
        tested["test"] = {
            "accuracy": final["accuracy"],
            "loss": final["loss"],
            "macro_f1": final["macro"]["f1"],
            **{name: final[name] for name in ("balanced_accuracy", "map") if name in final},
        }
    run.events.hparams(hyperparameters, summary, step=step)
    run.events.close()
    write_status(
        run_dir,
        status="finished",
        finished=now(),
        best_epoch=state.best_epoch,
        best_accuracy=best[held_out]["accuracy"],
        best_metric=best_metric_name(config.best_metric, config.task),
        stopped=run.stop_reason or f"trained all {config.epochs} epochs",
        **tested,
    )


def write_end_plots(
    run: TrainingRun,
    run_dir: Path,
    history: list[dict[str, Any]],
    predictions: Any,
    tested: Samples,
    step: int,
) -> None:
    """The confusion matrix, mistakes and curves; for a multi-label run, per-class label counts and
    the curves (its pictures have no one true class). `tested`: the samples `predictions` are of."""
    from visionfit.evaluation import (
        collect_mistakes,
        write_label_count_plots,
        write_mistakes_cam,
        write_training_plots,
    )

    classes, writer = run.data.classes, run.events.writer
    if run.config.task == "multilabel":
        write_label_count_plots(run_dir, history, classes, writer, step)
        return
    assert predictions is not None  # rank 0 holds every rank's predictions
    mistakes = collect_mistakes(predictions, tested, classes, run.preprocess)
    write_training_plots(run_dir, history, mistakes, classes, writer, step)
    write_mistakes_cam(run_dir, mistakes, run.checkpoints.last, writer, step)


def final_table(config: TrainConfig, last: dict[str, Any], best: dict[str, Any], classes: list[str]) -> str:
    """The last epoch's per-class table (and, multi-label, where the thresholds come from)."""
    if config.task == "multilabel":
        return format_multilabel_report(last, classes) + "\n" + multilabel_thresholds_line(best)
    return format_report(last, classes)
