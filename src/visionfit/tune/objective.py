"""One trial: the base config (with its validation split) and the trial's draws, trained as an
ordinary run folder (STUDY/trials/trial-NNNN); each epoch's validation score is reported to the
pruner, and a pruned trial stops there, "pruned" in its run.json. A trial that retries a dead
worker's trial continues that trial's run from its last checkpoint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, apply_overrides
from visionfit.config.validation import check_config
from visionfit.engine.checkpointing import LAST
from visionfit.engine.metrics import best_metric_name, metric_score
from visionfit.engine.run_folder import write_status
from visionfit.engine.run_lock import lock_run_folder
from visionfit.errors import UserError
from visionfit.tune import require_optuna
from visionfit.tune.space import SearchSpace
from visionfit.tune.study import FAILURE

RUN_FOLDER = "run_folder"  # the user attribute naming a trial's run folder
EPOCHS = "epochs_trained"

logger = logging.getLogger(__name__)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def validation_score(record: dict[str, Any], best_metric: str | None) -> float | None:
    """The epoch's --best-metric on the validation split, higher is better (the loss negated): the
    number training chooses its best checkpoint by (default: accuracy, mAP for a multi-label run);
    None in an epoch without a test (--test-every). Never the test split: a trial always has a
    validation split."""
    report = record.get("val")
    if report is None:
        return None
    return metric_score(report, best_metric_name(best_metric, report.get("task", "single")))


def recorded_scores(folder: Path, best_metric: str | None) -> dict[int, float]:
    """The validation score of each epoch a run's metrics.jsonl records (its last line for an epoch;
    a line torn by a kill is skipped)."""
    path = folder / "metrics.jsonl"
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        score = validation_score(record, best_metric)
        if score is not None:
            scores[record["epoch"]] = score
    return scores


def continued_run(trial: Any, folder: Path) -> bool:
    """Whether this trial continues a dead worker's trial: Optuna's retry copies the dead trial's
    user attributes, its run folder among them. A folder with a last checkpoint moves to this
    trial's name and training resumes from it; without one, or while a process still holds its run
    lock (a worker whose heartbeat was only late), the trial starts afresh in its own folder."""
    earlier = trial.user_attrs.get(RUN_FOLDER)
    if earlier is None or Path(earlier) == folder or not (Path(earlier) / "checkpoints" / LAST).is_file():
        return False
    try:
        with lock_run_folder(Path(earlier)):  # a worker only thought dead may still be training there
            Path(earlier).rename(folder)
    except UserError as error:
        logger.warning(f"trial {trial.number} starts afresh: {error}")
        return False
    logger.info(f"trial {trial.number} continues the run of a dead worker's trial from {earlier}")
    return True


@dataclass
class Objective:
    """Trains one trial of `space` on top of `base` (whose data has a validation split)."""

    base: TrainConfig
    space: SearchSpace
    trials_dir: Path

    def trial_config(self, values: dict[str, Any], number: int) -> TrainConfig:
        """The base config with the trial's values, its run folder STUDY/trials/trial-NNNN (a bad
        combination of values fails here, before any training)."""
        placement = {"run_dir": str(self.trials_dir), "name": trial_name(number)}
        config = apply_overrides(self.base, {**values, **placement}, f"trial {number}")
        check_config(config)
        return config

    def __call__(self, trial: Any) -> float:
        optuna = require_optuna()
        from visionfit.training import train

        folder = self.trials_dir / trial_name(trial.number)
        resume = folder if continued_run(trial, folder) else None
        trial.set_user_attr(RUN_FOLDER, str(folder))
        epochs: list[int] = []
        # A resumed run's epochs before its checkpoint, reported to this trial before its first new one.
        earlier = recorded_scores(folder, self.base.best_metric) if resume else {}

        def report(record: dict[str, Any]) -> None:
            for epoch in sorted(epoch for epoch in earlier if epoch < record["epoch"]):
                trial.report(earlier[epoch], epoch)
            earlier.clear()
            epochs.append(record["epoch"])
            trial.set_user_attr(EPOCHS, len(epochs))
            score = validation_score(record, self.base.best_metric)
            if score is None:
                return
            trial.report(score, record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation score {score:.4g} at epoch {record['epoch']}")

        try:
            config = self.trial_config(self.space.suggest(trial), trial.number)
            result = train(config, resume=resume, on_epoch=report)
        except optuna.TrialPruned:
            write_status(folder, status="pruned", pruned_at_epoch=epochs[-1], trial=trial.number)
            logger.info(f"trial {trial.number} pruned after epoch {epochs[-1]}")
            raise
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            trial.set_user_attr(FAILURE, message)
            logger.warning(f"trial {trial.number} failed: {message}")
            raise
        write_status(folder, trial=trial.number)
        scores = [validation_score(record, config.best_metric) for record in result.history]
        return max(score for score in scores if score is not None)
