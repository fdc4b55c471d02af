"""The Optuna study: its storage, sampler and pruner, and when a worker stops.

Storage is a SQLite file in the study folder unless an RDB URL is given; either way several
`visionfit tune` processes may work on one study. Every running trial sends a heartbeat: a trial
whose worker died (SIGKILL, lost machine) is failed once its heartbeat is `grace` seconds old, and
Optuna's `RetryHeartbeatStaleTrialCallback` queues the same parameters again as a new trial. Trials that
failed by themselves (an error, a NaN loss) stay failed and count as done; died ones do not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.errors import UserError
from visionfit.tune import require_optuna

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
FAILURE = "failure"  # the user attribute of a trial that failed by itself (not a dead worker's)
MAX_RETRY = 2  # a trial whose worker died is run again at most this many times


@dataclass(frozen=True)
class StudyOptions:
    """Where the study lives and how it searches."""

    name: str
    folder: Path
    storage: str | None = None  # an RDB URL; None: SQLite in `folder`
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0  # the sampler's
    heartbeat: int = 30  # seconds between a running trial's heartbeats
    startup_trials: int = 3  # trials the median pruner lets finish before it prunes
    prune_from: int | None = None  # the first epoch a trial may be pruned after; None: `first_pruned_epoch`

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"


def create_sampler(options: StudyOptions) -> Any:
    optuna = require_optuna()
    if options.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=options.seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    if options.sampler == "cmaes":  # categorical options fall back to its independent sampler
        return optuna.samplers.CmaEsSampler(seed=options.seed, warn_independent_sampling=False)
    raise UserError(f"unknown sampler {options.sampler!r}; choose from {', '.join(SAMPLERS)}")


def first_pruned_epoch(options: StudyOptions, epochs: int) -> int:
    """The first epoch after which the median pruner may stop a trial: --prune-from, else a quarter
    of the epochs (at least the first): early epochs are noisy, and with a warm-up the learning
    rates have not yet told apart, but a trial that is behind after a quarter of its schedule
    rarely ends ahead, and stopping it then saves the other three quarters."""
    return options.prune_from if options.prune_from is not None else max(1, epochs // 4)


def create_pruner(options: StudyOptions, epochs: int) -> Any:
    optuna = require_optuna()
    if options.pruner == "median":
        # Optuna's MedianPruner prunes at step >= n_warmup_steps (a trial's steps are its epochs,
        # 1, 2, ...): a trial whose best validation score so far is below the median of the
        # finished trials' scores at the same epoch, checked after every epoch from then on.
        return optuna.pruners.MedianPruner(
            n_startup_trials=options.startup_trials,
            n_warmup_steps=first_pruned_epoch(options, epochs),
            interval_steps=1,
        )
    if options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    if options.pruner == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {options.pruner!r}; choose from {', '.join(PRUNERS)}")


def open_storage(options: StudyOptions) -> Any:
    """The RDB storage with heartbeats and the retry of dead workers' trials."""
    optuna = require_optuna()
    options.folder.mkdir(parents=True, exist_ok=True)
    url = options.storage_url
    # SQLite: wait for another worker's write instead of failing with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():  # Optuna marks its heartbeat machinery experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=options.heartbeat,
                grace_period=options.heartbeat * 2,
                # The retry keeps the dead trial's user attributes: its run folder, which the retry
                # resumes from its last checkpoint, reporting that run's earlier epochs (`objective`).
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
            )
    except ImportError as error:  # a driver the URL names (psycopg2, pymysql) is missing
        raise UserError(f"--storage {url}: {error}; install that database's Python driver") from None


def open_study(options: StudyOptions, epochs: int) -> Any:
    """The study named `options.name` in its storage: joined when it exists, created otherwise."""
    optuna = require_optuna()
    with creation_lock(options.folder):  # two workers starting at once would both create the tables
        study = optuna.create_study(
            storage=open_storage(options),
            study_name=options.name,
            sampler=create_sampler(options),
            pruner=create_pruner(options, epochs),
            direction="maximize",
            load_if_exists=True,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial, once its heartbeat is old
    return study


@contextmanager
def creation_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on FOLDER/.create.lock while a worker creates or joins the study (workers
    on one machine; on several machines the RDB's own transactions serialise them)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".create.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock (start the workers one after another)
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def done_trials(study: Any) -> int:
    """Trials that count toward --trials: finished, pruned, or failed by themselves (a dead
    worker's trial is retried as a new trial and counts once, when that one ends)."""
    states = require_optuna().trial.TrialState
    return sum(
        1
        for trial in study.get_trials(deepcopy=False)
        if trial.state in (states.COMPLETE, states.PRUNED)
        or (trial.state == states.FAIL and FAILURE in trial.user_attrs)
    )


def stop_at(total: int) -> Any:
    """A callback that stops this worker once the study holds `total` done trials."""

    def stop_when_done(study: Any, trial: Any) -> None:
        if done_trials(study) >= total:
            study.stop()

    return stop_when_done
