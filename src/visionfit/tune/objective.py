"""One trial: the base config with the trial's draws, trained as an ordinary run folder
(STUDY/trials/trial-NNNN) on the study's validation split; each epoch's validation accuracy is
reported to the pruner, and a pruned trial stops there, "pruned" in its run.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, apply_overrides
from visionfit.config.validation import check_config
from visionfit.engine.run_folder import write_status
from visionfit.tune import require_optuna
from visionfit.tune.space import SearchSpace
from visionfit.tune.study import FAILURE

RUN_FOLDER = "run_folder"  # the user attribute naming a trial's run folder
EPOCHS = "epochs_trained"

logger = logging.getLogger(__name__)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def validation_accuracy(record: dict[str, Any]) -> float | None:
    """The epoch's accuracy on the validation split (the trial's "test": see `holdout`), if tested."""
    tested = record.get("test")
    return None if tested is None else float(tested["accuracy"])


@dataclass
class Objective:
    """Trains one trial of `space` on top of `base`, on the validation folder `data_dir`."""

    base: TrainConfig
    space: SearchSpace
    data_dir: Path
    trials_dir: Path

    def trial_config(self, values: dict[str, Any], number: int) -> TrainConfig:
        """The base config with the trial's values, its data the validation folder, its run folder
        STUDY/trials/trial-NNNN (a bad combination of values fails here, before any training)."""
        placement = {
            "dataset": "folder",
            "data_dir": str(self.data_dir),
            "run_dir": str(self.trials_dir),
            "name": trial_name(number),
        }
        config = apply_overrides(self.base, {**values, **placement}, f"trial {number}")
        check_config(config)
        return config

    def __call__(self, trial: Any) -> float:
        optuna = require_optuna()
        from visionfit.training import train

        folder = self.trials_dir / trial_name(trial.number)
        trial.set_user_attr(RUN_FOLDER, str(folder))
        epochs: list[int] = []

        def report(record: dict[str, Any]) -> None:
            epochs.append(record["epoch"])
            trial.set_user_attr(EPOCHS, len(epochs))
            accuracy = validation_accuracy(record)
            if accuracy is None:
                return
            trial.report(accuracy, record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {accuracy:.2%} at epoch {record['epoch']}")

        try:
            config = self.trial_config(self.space.suggest(trial), trial.number)
            result = train(config, on_epoch=report)
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
        scores = [score for score in map(validation_accuracy, result.history) if score is not None]
        return max(scores)
