"""`visionfit train`: one flag per config field, the config layered defaults → recipe → file →
flags, then `visionfit.training.train` (or N processes of it through torchrun with --nproc)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionfit.cli.arguments import key_value
from visionfit.config import TrainConfig, build_config, config_fields, flag_name, read_config_file
from visionfit.config.fields import field_choices, field_help
from visionfit.config.validation import check_global_batch
from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.engine.resume import ResumePlan

GROUP_TITLES = {"data": "data", "model": "model", "optimisation": "optimisation", "run": "run"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a classifier (CIFAR-10 by default)",
        description="Train a classifier. Values come from the defaults, then --recipe, then "
        "--config FILE, then the flags given here.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML, JSON or TOML file of options (a run's config.yaml works)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        default=argparse.SUPPRESS,
        help="continue a run exactly where its last checkpoint left off (its own config applies; "
        "only --device, --workers, --log-every, --checkpoint-every-*, --tensorboard, --on-nan, "
        "--clip-grad-norm, --dist-timeout and the number of processes may change); auto: the "
        "newest unfinished run with the same config in --run-dir, or a new run when there is none",
    )
    parser.add_argument(
        "--nproc",
        metavar="N",
        type=int,
        default=argparse.SUPPRESS,
        help="train in N processes on this machine (one per GPU, or CPU processes), started "
        "through torchrun; --batch-size stays the global batch",
    )
    add_config_options(parser)
    parser.set_defaults(handler=run)


def add_config_options(
    parser: argparse.ArgumentParser, helps: dict[str, str] | None = None, names: tuple[str, ...] | None = None
) -> None:
    """One flag per TrainConfig field (or per field in `names`: doctor's data options), with its
    help, group, choices and type; `helps`: another command's own help for some fields (tune's
    --val-fraction defaults differently). A flag left out keeps no value (the config's default)."""
    hints = typing.get_type_hints(TrainConfig)
    chosen = [each for each in config_fields() if names is None or each.name in names]
    used = {config_field.metadata["group"] for config_field in chosen}
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items() if key in used}
    for config_field in chosen:
        group = groups[config_field.metadata["group"]]
        annotation = hints[config_field.name]
        base = annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            (base,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        options: dict[str, Any] = {
            "dest": config_field.name,
            "default": argparse.SUPPRESS,
            "help": (helps or {}).get(config_field.name) or field_help(config_field),
        }
        if config_field.default not in (dataclasses.MISSING, None):
            options["help"] += f" (default: {config_field.default})"
        if config_field.metadata.get("metavar"):
            options["metavar"] = config_field.metadata["metavar"]
        choices = field_choices(config_field)  # read now: the registries may have grown
        if choices:
            options["choices"] = choices
        if base is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is dict:
            options.update(action="append", type=key_value)
        elif base in (int, float):
            options["type"] = base
        group.add_argument(flag_name(config_field), **options)


def run(arguments: argparse.Namespace) -> int:
    values = vars(arguments).copy()
    command_line = values.pop("command_line")
    for key in ("command", "handler"):
        values.pop(key)
    nproc = values.pop("nproc", None)
    config_path = values.pop("config", None)
    resume = values.pop("resume", None)
    if "model_args" in values:
        values["model_args"] = dict(values["model_args"])
    if resume is not None and resume != "auto" and config_path:
        raise UserError("--resume RUN_DIR uses the run's own config; leave out --config")
    from visionfit.console import setup_logging

    setup_logging()  # the config's own lines (the defaults the data chose) are printed too
    plan = plan_from_flags(values, config_path, resume)
    if nproc is not None and nproc != 1:  # options checked above, once, before starting N processes
        from visionfit.launch import launch, strip_nproc

        check_global_batch(plan.config.batch_size, max(1, nproc))
        return launch(nproc, strip_nproc(command_line[command_line.index("train") + 1 :]))
    from visionfit.training import run_training

    run_training(plan)
    return 0


def plan_from_flags(values: dict[str, Any], config_path: str | None, resume: str | None) -> ResumePlan:
    """The finished plan: the config layered defaults → recipe → --config FILE → flags, or with
    --resume RUN_DIR the run's own config.yaml with the flags' changes; validated once."""
    from visionfit.engine.resume import ResumePlan, plan_run  # torch: not for --help

    if resume is not None and resume != "auto":
        if not (Path(resume).expanduser() / "config.yaml").is_file():
            raise UserError(f"--resume {resume}: not a visionfit run folder (no config.yaml)")
        return plan_run(None, resume, values)
    file_values = read_config_file(config_path) if config_path else {}
    config = build_config(file_values, values, file_name=str(config_path))
    return ResumePlan(config, search=resume == "auto")
