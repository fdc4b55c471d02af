"""`visionfit tune`: a hyperparameter search over train options on Optuna.

`space` turns a YAML space file (or a recipe's default space) into `trial.suggest_*` calls;
trials are scored on the data's validation split (never the test split); `study` opens the
Optuna study (SQLite in the study folder, or an RDB URL shared by several workers, with
heartbeats so that a dead worker's trial is failed and retried); `objective` trains one trial as an
ordinary run folder and reports each epoch to the pruner; `report` writes the table of the best
trials, best.yaml and the figures. Optuna is the `tune` extra, imported only here.
"""

from __future__ import annotations

from types import ModuleType

from visionfit.errors import UserError

INSTALL_HINT = "pip install 'visionfit[tune]'"


def require_optuna() -> ModuleType:
    """The optuna module, or one line naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UserError(f"visionfit tune needs optuna; install it with: {INSTALL_HINT}") from None
    return optuna
