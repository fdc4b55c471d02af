"""What a study leaves: the table of its best trials, best.yaml (the base config with the best
trial's values, on the user's own data: `visionfit train --config best.yaml` runs it as is) and
Optuna's matplotlib figures as PNGs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, apply_overrides, save_config
from visionfit.tune import require_optuna
from visionfit.tune.objective import EPOCHS, RUN_FOLDER
from visionfit.tune.study import FAILURE

logger = logging.getLogger(__name__)

FIGURES = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
    "intermediate_values": "plot_intermediate_values",
}


def trial_counts(study: Any) -> dict[str, int]:
    """How many trials are in each state: complete, pruned, fail, running, waiting."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def shown_score(value: float, metric: str) -> str:
    """A trial's score as the metric reads: a percentage, or the loss (scored negated)."""
    return f"{-value:.4f}" if metric == "loss" else f"{value:.2%}"


def best_trials_table(study: Any, metric: str = "accuracy", count: int = 5) -> str:
    """A Markdown table of the `count` best complete trials: number, validation score (`metric`),
    epochs trained, their values, run folder."""
    states = require_optuna().trial.TrialState
    finished = [trial for trial in study.get_trials(deepcopy=False) if trial.state == states.COMPLETE]
    best = sorted(finished, key=lambda trial: trial.value, reverse=True)[:count]
    if not best:
        return "(no trial finished)"
    names = list(best[0].params)
    header = ["trial", f"val {metric}", "epochs", *names, "run folder"]
    rows = [
        [
            str(trial.number),
            shown_score(trial.value, metric),
            str(trial.user_attrs.get(EPOCHS, "")),
            *(_shown(trial.params.get(name)) for name in names),
            Path(trial.user_attrs.get(RUN_FOLDER, "")).name,
        ]
        for trial in best
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def failures(study: Any) -> list[str]:
    """One line per trial that failed by itself, with its reason."""
    return [
        f"trial {trial.number}: {trial.user_attrs[FAILURE]}"
        for trial in study.get_trials(deepcopy=False)
        if FAILURE in trial.user_attrs and trial.state.name == "FAIL"
    ]


def write_best_config(base: TrainConfig, best_params: dict[str, Any], path: Path) -> TrainConfig:
    """best.yaml: `base` (the user's data, recipe and flags) with the best trial's values."""
    config = apply_overrides(base, {**best_params, "name": None}, "the best trial")
    save_config(config, path)
    return config


def write_figures(study: Any, folder: Path) -> list[Path]:
    """Optuna's figures of the study as PNGs; one it cannot draw yet (importances need two finished
    trials) is left out with a line saying why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as plots

    written = []
    for name, function in FIGURES.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib figures experimental
                warnings.simplefilter("ignore", ExperimentalWarning)
                axes = getattr(plots, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            logger.info(f"figure {name} left out: {error}")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        pyplot.close(figure)
        written.append(path)
    return written
