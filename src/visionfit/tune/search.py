"""`tune(base, space, options)`: one worker's part of a study, read top to bottom — the validation
split, the study (joined or created), trials until the study holds `trials` done ones or the
worker's time is up, then the report: best trials, best.yaml, figures, the best trial's test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig
from visionfit.tune import require_optuna
from visionfit.tune.holdout import validation_folder
from visionfit.tune.objective import RUN_FOLDER, Objective
from visionfit.tune.report import best_trials_table, trial_counts, write_best_config, write_figures
from visionfit.tune.space import SearchSpace
from visionfit.tune.study import StudyOptions, done_trials, open_study, stop_at

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneOptions:
    """How long a worker searches and what it measures on."""

    trials: int = 20  # done trials the study should hold (all workers together)
    timeout: float | None = None  # seconds this worker starts new trials for
    val_fraction: float = 0.2  # share of each class of the training split held out for validation
    final_test: bool = True  # measure the best trial's checkpoint on the test split at the end


@dataclass
class TuneResult:
    """Where the study is and how it went."""

    folder: Path
    counts: dict[str, int]
    table: str
    best_config: Path | None = None
    best_value: float | None = None
    best_run: Path | None = None
    test_accuracy: float | None = None
    figures: list[Path] = field(default_factory=list)


def tune(base: TrainConfig, space: SearchSpace, study: StudyOptions, options: TuneOptions) -> TuneResult:
    """Work on the study until it holds `options.trials` done trials (or the timeout), then report."""
    require_optuna()
    data_dir = validation_folder(base, study.folder / "validation-data", options.val_fraction, base.seed)
    optuna_study = open_study(study, base.epochs)
    objective = Objective(base, space, data_dir, study.folder / "trials")
    logger.info(f"study {study.name} in {study.storage_url}; searching: {'; '.join(space.describe())}")
    if done_trials(optuna_study) < options.trials:
        optuna_study.optimize(
            objective,
            timeout=options.timeout,
            callbacks=[stop_at(options.trials)],
            catch=(Exception,),  # a failed trial is marked failed; the study goes on
            gc_after_trial=True,
        )
    return report(optuna_study, base, study.folder, options)


def report(optuna_study: Any, base: TrainConfig, folder: Path, options: TuneOptions) -> TuneResult:
    """The table of best trials, best.yaml, the figures and (once) the best trial's test accuracy."""
    result = TuneResult(folder, trial_counts(optuna_study), best_trials_table(optuna_study))
    states = require_optuna().trial.TrialState
    if not any(trial.state == states.COMPLETE for trial in optuna_study.get_trials(deepcopy=False)):
        return result
    best = optuna_study.best_trial
    result.best_value, result.best_run = best.value, Path(best.user_attrs[RUN_FOLDER])
    result.best_config = folder / "best.yaml"
    write_best_config(base, best.params, result.best_config)
    result.figures = write_figures(optuna_study, folder)
    if options.final_test:
        result.test_accuracy = best_trial_test(base, result.best_run)
    return result


def best_trial_test(base: TrainConfig, run_folder: Path) -> float:
    """The best trial's best checkpoint on the test split of the user's data: measured once, at the
    end, and never used to choose anything."""
    from visionfit.evaluation import evaluate_checkpoint
    from visionfit.inference import InferenceOptions

    evaluation = evaluate_checkpoint(
        run_folder / "checkpoints" / "best.safetensors",
        InferenceOptions(device=base.device),
        dataset=base.dataset,
        data_dir=base.data_dir,
        split="test",
    )
    return float(evaluation.report["accuracy"])
