"""`tune(base, space, options)`: one worker's part of a study, read top to bottom — the validation
split, the study (joined or created), trials until the study holds `trials` done ones or the
worker's time is up, then the report: best trials, best.yaml, figures, the best trial's test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, apply_overrides
from visionfit.data.label_options import label_file_options
from visionfit.data.registry import SplitShares, load_data
from visionfit.engine.metrics import best_metric_name
from visionfit.engine.run_folder import read_status
from visionfit.tune import require_optuna
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
    val_fraction: float = 0.2  # --val-fraction when neither the flags nor the data give a validation split


@dataclass
class TuneResult:
    """Where the study is and how it went."""

    folder: Path
    counts: dict[str, int]
    table: str
    best_config: Path | None = None
    best_value: float | None = None  # higher is better: a loss is negated (`shown_score`)
    metric: str = "accuracy"  # what scored the trials: --best-metric, as the trials' runs resolved it
    best_run: Path | None = None
    test_accuracy: float | None = None
    figures: list[Path] = field(default_factory=list)


def tune(base: TrainConfig, space: SearchSpace, study: StudyOptions, options: TuneOptions) -> TuneResult:
    """Work on the study until it holds `options.trials` done trials (or the timeout), then report."""
    require_optuna()
    base = with_validation(base, options.val_fraction)
    optuna_study = open_study(study, base.epochs)
    objective = Objective(base, space, study.folder / "trials")
    logger.info(f"study {study.name} in {study.storage_url}; searching: {'; '.join(space.describe())}")
    if done_trials(optuna_study) < options.trials:
        optuna_study.optimize(
            objective,
            timeout=options.timeout,
            callbacks=[stop_at(options.trials)],
            catch=(Exception,),  # a failed trial is marked failed; the study goes on
            gc_after_trial=True,
        )
    return report(optuna_study, base, study.folder)


def with_validation(base: TrainConfig, val_fraction: float) -> TrainConfig:
    """`base` scored on a validation split, never on test: the --val-fraction given, the data's
    own (train/, val/ and test/ folders, a label file's split column), or else `val_fraction` of
    each class of the training images held out."""
    if base.val_fraction is not None:
        return base
    data = load_data(
        base.dataset,
        base.data_dir,
        shares=SplitShares(base.test_fraction, seed=base.seed),
        label_file=label_file_options(vars(base)),
    )
    if data.val is not None:
        logger.info(f"trials are scored on the data's own validation split ({len(data.val)} images)")
        return base
    logger.info(f"trials are scored on --val-fraction {val_fraction:g} of the training images")
    return apply_overrides(base, {"val_fraction": val_fraction}, "visionfit tune")


def report(optuna_study: Any, base: TrainConfig, folder: Path) -> TuneResult:
    """The table of best trials, best.yaml, the figures and the best trial's test accuracy."""
    result = TuneResult(folder, trial_counts(optuna_study), best_trials_table(optuna_study))
    states = require_optuna().trial.TrialState
    if not any(trial.state == states.COMPLETE for trial in optuna_study.get_trials(deepcopy=False)):
        return result
    best = optuna_study.best_trial
    result.best_value, result.best_run = best.value, Path(best.user_attrs[RUN_FOLDER])
    status = read_status(result.best_run)
    result.metric = status.get("best_metric", best_metric_name(base.best_metric, base.task))
    result.table = best_trials_table(optuna_study, result.metric)
    result.best_config = folder / "best.yaml"
    write_best_config(base, best.params, result.best_config)
    result.figures = write_figures(optuna_study, folder)
    # The trial's run measured the test split once, on its best weights, after its last epoch.
    result.test_accuracy = status.get("test", {}).get("accuracy")
    return result
