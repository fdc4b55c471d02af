"""`visionfit tune`: train's data and option flags (the fixed part of every trial), the search's
own flags, then `visionfit.tune.search.tune`; prints the table of the best trials and where
best.yaml and the figures are. Optuna is imported only inside `run`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from visionfit.cli.arguments import positive
from visionfit.cli.train import add_config_options
from visionfit.config import build_config, read_config_file
from visionfit.errors import UserError

SAMPLERS = ("tpe", "random", "cmaes")  # as visionfit.tune.study says (not imported: --help stays light)
PRUNERS = ("median", "hyperband", "none")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
VAL_FRACTION_HELP = (
    "share of each class of the training images held out for validation, which scores the trials "
    "(default: the data's own validation split — train/ val/ test/ folders or a label file's split "
    "column — else 0.2)"
)


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h` or `1d`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m or 2h, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "tune",
        help="search train options with Optuna: pruned trials, each a run folder; best.yaml at the end",
        description="Search train options with Optuna, scored on a validation split (the data's own: "
        "train/ val/ test/ folders or a label file's split column; else --val-fraction, 0.2 unless "
        "given; never the test split), on --best-metric (default: accuracy; loss is minimised). "
        "The train flags given here are fixed in every trial; --space "
        "says what varies (default: the recipe's space). Each trial is a run folder under "
        "RUN_DIR/STUDY/trials; several workers may share a study (the same --study and --storage).",
    )
    add_search_options(parser.add_argument_group("search"))
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="train options file")
    add_config_options(parser, {"val_fraction": VAL_FRACTION_HELP})
    parser.set_defaults(handler=run)


def add_search_options(search: Any) -> None:
    """The flags of the search itself (the train flags beside them are fixed in every trial)."""
    search.add_argument(
        "--space", metavar="FILE", help="YAML file of options to search (default: the recipe's)"
    )
    search.add_argument(
        "--trials", type=positive, default=20, help="done trials the study should hold (default: 20)"
    )
    search.add_argument("--timeout", type=duration, help="stop starting trials after this long: 90s, 30m, 2h")
    search.add_argument(
        "--study", default="tune", help="study name; its folder is RUN_DIR/STUDY (default: tune)"
    )
    search.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna RDB URL shared by several workers, e.g. postgresql://host/db (default: "
        "sqlite:///RUN_DIR/STUDY/study.db)",
    )
    search.add_argument(
        "--search",
        choices=SAMPLERS,
        default="tpe",
        help="Optuna's sampler, the search algorithm (default: tpe)",
    )
    add_pruner_options(search)
    search.add_argument("--search-seed", type=int, default=0, help="the search algorithm's seed (default: 0)")
    search.add_argument(
        "--heartbeat",
        type=positive,
        default=30,
        metavar="SECONDS",
        help="a running trial's heartbeat; a trial silent for twice this is failed and retried (default: 30)",
    )


def add_pruner_options(search: Any) -> None:
    """--pruner and the median pruner's settings."""
    search.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="stop poor trials early: median stops a trial whose best validation score so far is "
        "below the median of the finished trials' at the same epoch, checked after every epoch from "
        "--prune-from on, once --startup-trials trials have finished; hyperband: Optuna's "
        "successive-halving brackets from 1 epoch to --epochs (default: median)",
    )
    search.add_argument(
        "--startup-trials",
        type=positive,
        default=3,
        metavar="N",
        help="trials the median pruner lets finish before it stops any (default: 3)",
    )
    search.add_argument(
        "--prune-from",
        type=positive,
        metavar="EPOCH",
        help="the first epoch after which the median pruner may stop a trial (default: a quarter of "
        "--epochs, at least 1: 2 of 8 or 10 epochs)",
    )


SEARCH_KEYS = (
    "space",
    "trials",
    "timeout",
    "study",
    "storage",
    "search",
    "pruner",
    "startup_trials",
    "prune_from",
    "search_seed",
    "heartbeat",
)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.console import setup_logging
    from visionfit.tune import require_optuna
    from visionfit.tune.search import TuneOptions, tune
    from visionfit.tune.space import default_space, read_space
    from visionfit.tune.study import StudyOptions

    setup_logging()
    require_optuna()
    values = vars(arguments).copy()
    for key in ("command", "handler", "command_line"):
        values.pop(key, None)
    search = {key: values.pop(key) for key in SEARCH_KEYS}
    config_path = values.pop("config", None)
    if "model_args" in values:
        values["model_args"] = dict(values["model_args"])
    if values.get("name") is not None:
        raise UserError("tune names each trial's run itself; leave out --name (use --study)")
    base = build_config(
        read_config_file(config_path) if config_path else {}, values, file_name=str(config_path)
    )
    space = read_space(search["space"]) if search["space"] else default_space(base)
    study = StudyOptions(
        name=search["study"],
        folder=Path(base.run_dir).expanduser() / search["study"],
        storage=search["storage"],
        sampler=search["search"],
        pruner=search["pruner"],
        seed=search["search_seed"],
        startup_trials=search["startup_trials"],
        prune_from=search["prune_from"],
        heartbeat=search["heartbeat"],
    )
    options = TuneOptions(search["trials"], search["timeout"])
    result = tune(base, space, study, options)
    print_result(result, study)
    return 0


def print_result(result: Any, study: Any) -> None:
    from visionfit.tune.report import shown_score

    counts = ", ".join(f"{count} {state}" for state, count in sorted(result.counts.items()))
    print(f"\nstudy {study.name}: {counts}\n\n{result.table}\n")
    if result.best_config is None:
        print("no trial finished: no best.yaml")
        return
    score = shown_score(result.best_value, result.metric)
    print(f"best validation {result.metric} {score} (run {result.best_run})")
    if result.test_accuracy is not None:
        print(f"its test accuracy (measured once, at the end of its run): {result.test_accuracy:.2%}")
    print(f"best config: {result.best_config}; train it with: visionfit train --config {result.best_config}")
    if result.figures:
        print(f"figures: {', '.join(str(path) for path in result.figures)}")
    print(f"dashboard: optuna-dashboard {study.storage_url}")
