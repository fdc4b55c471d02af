"""The run's records: TensorBoard event files (through the real `tensorboard` package) and
`metrics.jsonl`, one JSON object per epoch for scripts and plots."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionfit.console import logger


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


SPLIT_SCALARS = (
    "loss",
    "accuracy",
    "balanced_accuracy",
    "top5_accuracy",
    "map",
    "exact_match",
    "hamming_loss",
)


class RunEvents:
    """Writes one run's TensorBoard events and metrics.jsonl. Only the main process creates one."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, purge_step: int | None = None) -> None:
        """`purge_step` (on resume): TensorBoard discards events at or after this step that earlier
        processes wrote, so a resumed run has no duplicated or stale points."""
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Append the epoch's record to metrics.jsonl and log its numbers to TensorBoard.

        Every scalar is indexed by the global training step (the epoch's last step here), the one
        axis on which a resumed run can purge what a killed process logged after its checkpoint;
        `epoch` is logged as a scalar of its own to read epochs off that axis.
        """
        with open(self.metrics_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["step"]
        self.writer.add_scalar("epoch", record["epoch"], step)
        self.writer.add_scalar("train/epoch_loss", record["train_loss"], step)
        for split in ("test", "val"):  # None in an epoch without a test (--test-every)
            if record.get(split) is not None:
                self.split_scalars(split, record[split], step)
        self.writer.flush()

    def split_scalars(self, split: str, report: dict[str, Any], step: int) -> None:
        """One held-out split's numbers (`split`: "test" or "val") for TensorBoard."""
        assert self.writer is not None
        # Multi-label tests have no top-5 or balanced accuracy; single-label ones no mAP.
        for name in SPLIT_SCALARS:
            if name in report:
                self.writer.add_scalar(f"{split}/{name}", report[name], step)
        for average in ("macro", "weighted", "micro"):
            for name, value in report.get(average, {}).items():
                self.writer.add_scalar(f"{split}/{average}_{name}", value, step)
        for name in ("ece", "mce", "nll", "brier") if "calibration" in report else ():  # not multi-label
            self.writer.add_scalar(f"{split}_calibration/{name}", report["calibration"][name], step)
        for class_name, values in report["per_class"].items():
            for name in ("precision", "recall", "f1", "ap"):
                if values.get(name) is not None:
                    self.writer.add_scalar(f"{split}_per_class/{name}/{class_name}", values[name], step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_images(tag, images.clamp(0, 1), step)

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        if self.writer is None:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # add_graph uses torch.jit.trace
                self.writer.add_graph(model, example)
        except Exception as error:  # tracing fails on some data-dependent control flow; not fatal
            logger.warning(
                f"TensorBoard graph skipped: the model could not be traced ({type(error).__name__})"
            )

    def hparams(self, hyperparameters: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """Record the run's settings next to its final metrics in TensorBoard's HParams tab.

        Written into this run's own event file (SummaryWriter.add_hparams would start another run
        folder for it).
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {key: _hparam_value(value) for key, value in hyperparameters.items()}
        finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
        experiment, session_start, session_end = hparams(clean, finite)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for key, value in finite.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class NoEvents(RunEvents):
    """What every process but rank 0 gets: the same calls, nothing written."""

    def __init__(self) -> None:
        self.writer = None

    def epoch(self, record: dict[str, Any]) -> None:
        pass


def open_events(
    run_dir: Path, tensorboard: bool, is_main: bool, resumed: bool, global_step: int
) -> RunEvents:
    """Rank 0's TensorBoard events and metrics.jsonl (nothing for the other ranks); on resume,
    TensorBoard drops whatever the killed process logged after the checkpoint (`global_step`)."""
    if not is_main:
        return NoEvents()
    purge_step = (global_step + 1 if global_step else 0) if resumed else None
    return RunEvents(run_dir, tensorboard=tensorboard, purge_step=purge_step)
