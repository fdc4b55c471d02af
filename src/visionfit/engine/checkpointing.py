"""A run's checkpoint policy: which checkpoints it keeps, what they say, when they are written,
and how a resumed run is put back from its `last` one.

- `last.safetensors`: resumable — the weights plus optimizer, schedule, grad scaler, RNG and loop
  state (with --ema also the raw training weights) — written after every epoch and, mid-epoch,
  every N steps or M minutes; the checkpoint it replaces stays as `last.prev.safetensors`, the
  fallback when the newest is found damaged.
- `best.safetensors`: the weights of the best tested epoch so far.
- `epoch_NNN.safetensors`: every epoch's weights, with --keep-every-epoch (the tutorial's habit).

With --ema every checkpoint's weights are the moving average (`engine.ema`), the weights the run
tests, so `best`, predict, eval and export use them without knowing about it.

Only rank 0 writes; the file format itself is `engine.checkpoint_file`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from visionfit.data.transforms import Preprocess
from visionfit.distributed import any_rank, broadcast_from_main
from visionfit.engine.checkpoint_file import (
    Checkpoint,
    checkpoint_metadata,
    load_checkpoint_or_previous,
    save_checkpoint,
)
from visionfit.engine.ema import WeightAverage, training_tensors, training_weights
from visionfit.engine.optim import Optimization
from visionfit.engine.state import TrainState, capture_training_state, restore_training_state
from visionfit.errors import UserError
from visionfit.models.record import ModelRecord

LAST = "last.safetensors"
BEST = "best.safetensors"


@dataclass
class RunCheckpoints:
    """The checkpoints of one run in `folder` (its `checkpoints/`), and what every one of them says
    about the model: its record, classes, preprocessing, the run's config and data sizes."""

    folder: Path
    record: ModelRecord
    classes: list[str]
    preprocess: Preprocess
    config: dict[str, Any]
    data_sizes: dict[str, Any]
    every_steps: int = 0
    every_minutes: float = 0.0
    keep_every_epoch: bool = False
    last_save: float = field(default_factory=time.monotonic)

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def metadata(self, state: TrainState, record: dict[str, Any] | None) -> dict[str, Any]:
        """The metadata of a checkpoint taken at `state`, after the epoch `record` describes."""
        fields: dict[str, Any] = {"epoch": state.epoch - 1, "step": state.global_step, "config": self.config}
        fields["data"] = {"classes": self.classes, **self.data_sizes}
        if record is not None:
            fields["metrics"] = epoch_metrics(record)
            if record["test"] is not None and "thresholds" in record["test"]:  # multi-label decisions
                fields["thresholds"] = record["test"]["thresholds"]
        return checkpoint_metadata(self.record, self.classes, self.preprocess, **fields)

    def due(self, state: TrainState) -> bool:
        """Whether a mid-epoch `last` checkpoint is due after this step (every process agrees)."""
        by_steps = self.every_steps and state.global_step % self.every_steps == 0
        if not self.every_minutes:
            return bool(by_steps)
        # Clocks differ between processes: all of them follow the one whose time is up first.
        return any_rank(bool(by_steps) or time.monotonic() - self.last_save >= 60 * self.every_minutes)

    def restart_clock(self) -> None:
        """Count the minutes to the next mid-epoch checkpoint from now (every process, after a save)."""
        self.last_save = time.monotonic()

    def save_last(
        self,
        model: nn.Module,
        optimization: Optimization,
        state: TrainState,
        record: dict[str, Any] | None,
        ema: WeightAverage | None = None,
    ) -> None:
        """The resumable checkpoint; the one it replaces stays as last.prev. With `ema`, its
        weights are the average and the raw ones are training state."""
        tensors, skeleton = capture_training_state(
            optimization.optimizer, optimization.scheduler, optimization.scaler, state
        )
        weights = model.state_dict()
        if ema is not None:
            tensors.update(training_tensors(weights))
            skeleton["ema"] = {"updates": ema.updates}
            weights = ema.state_dict()
        metadata = {**self.metadata(state, record), "training": skeleton}
        save_checkpoint(self.last, weights, metadata, tensors, keep_previous=True)

    def save_epoch(
        self,
        model: nn.Module,
        optimization: Optimization,
        state: TrainState,
        record: dict[str, Any],
        best: bool,
        ema: WeightAverage | None = None,
    ) -> None:
        """After an epoch: `last`, `best` when it is, and the epoch's own with --keep-every-epoch."""
        self.save_last(model, optimization, state, record, ema)
        weights = (ema.module if ema is not None else model).state_dict()
        metadata = self.metadata(state, record)
        if best:
            save_checkpoint(self.folder / BEST, weights, metadata)
        if self.keep_every_epoch:
            save_checkpoint(self.folder / f"epoch_{record['epoch']:03d}.safetensors", weights, metadata)

    def read_last(self) -> Checkpoint | None:
        """The run's `last` checkpoint (or its `.prev` when it is damaged); None before the first."""
        for leftover in self.folder.glob(".*.tmp"):  # torn writes of a process killed mid-save
            leftover.unlink(missing_ok=True)
        return load_checkpoint_or_previous(self.last) if self.last.is_file() else None

    def restore(
        self, model: nn.Module, optimization: Optimization, ema: WeightAverage | None = None
    ) -> TrainState:
        """Load the last checkpoint into the fresh model, optimizer and average (rank 0 reads it
        for all); a run killed before its first checkpoint starts over in its own folder."""
        checkpoint = broadcast_from_main(self.read_last)
        if checkpoint is None:
            return TrainState()
        saved = checkpoint.metadata.get("data", {})
        current = {"classes": self.classes, **self.data_sizes}
        if saved and saved != current:
            raise UserError(
                f"the data changed since {self.folder.parent} was checkpointed ({saved['train']} train / "
                f"{saved['test']} test images then, {current['train']} / {current['test']} now, or other "
                "classes); a resumed run needs the same data: start a new run"
            )
        training = checkpoint.metadata["training"]
        if ema is None:
            model.load_state_dict(checkpoint.model_state)
        else:
            model.load_state_dict(training_weights(checkpoint.extra_tensors))
            ema.load(checkpoint.model_state, training["ema"]["updates"])
        return restore_training_state(
            training,
            checkpoint.extra_tensors,
            optimization.optimizer,
            optimization.scheduler,
            optimization.scaler,
        )


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an epoch's record, as a checkpoint carries them."""
    metrics = {"train_loss": record["train_loss"]}
    for split in ("test", "val"):
        report = record.get(split)
        if report is not None:
            metrics.update(
                {
                    f"{split}_loss": report["loss"],
                    f"{split}_accuracy": report["accuracy"],
                    f"{split}_macro_f1": report["macro"]["f1"],
                }
            )
            for name in ("top5_accuracy", "balanced_accuracy"):  # one label per image
                if name in report:
                    metrics[f"{split}_{name}"] = report[name]
            if "map" in report:  # several labels per image
                metrics.update({f"{split}_map": report["map"], f"{split}_micro_f1": report["micro"]["f1"]})
    return metrics


def has_weights(run_dir: Path) -> bool:
    """Whether a run folder holds a `last` checkpoint to resume from."""
    return (run_dir / "checkpoints" / LAST).is_file()
