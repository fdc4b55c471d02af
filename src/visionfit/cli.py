"""The `visionfit` command: parse, build a config, call the library.

Torch is imported only inside the commands that need it, so `visionfit --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionfit.commands import RUNNERS, add_commands
from visionfit.config import (
    TrainConfig,
    build_config,
    config_fields,
    flag_name,
    read_config_file,
)
from visionfit.errors import UserError
from visionfit.recipes import RECIPES

GROUP_TITLES = {"data": "data", "model": "model", "optimisation": "optimisation", "run": "run"}


def _parse_model_arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    import yaml  # YAML scalars: 64 → int, 0.5 → float, true → bool, anything else stays text

    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().replace("-", "_"), value


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for config_field in config_fields():
        group = groups[config_field.metadata["group"]]
        annotation = hints[config_field.name]
        base = annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            (base,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        options: dict[str, Any] = {
            "dest": config_field.name,
            "default": argparse.SUPPRESS,
            "help": config_field.metadata["help"],
        }
        if config_field.default not in (dataclasses.MISSING, None):
            options["help"] += f" (default: {config_field.default})"
        if config_field.metadata.get("metavar"):
            options["metavar"] = config_field.metadata["metavar"]
        if config_field.metadata.get("choices"):
            options["choices"] = config_field.metadata["choices"]
        if base is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is dict:
            options.update(action="append", type=_parse_model_arg)
        elif base in (int, float):
            options["type"] = base
        group.add_argument(flag_name(config_field), **options)


def build_parser() -> argparse.ArgumentParser:
    from visionfit import __version__

    parser = argparse.ArgumentParser(
        prog="visionfit",
        description="Train, evaluate and use image classifiers with PyTorch.",
        epilog="Run `visionfit COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"visionfit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a classifier (CIFAR-10 by default)",
        description="Train a classifier. Values come from the defaults, then --recipe, then "
        "--config FILE, then the flags given here.",
    )
    train.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML, JSON or TOML file of options (a run's config.yaml works)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        default=argparse.SUPPRESS,
        help="continue a run exactly where its last checkpoint left off (its own config applies; "
        "only --device, --workers, --log-every, --checkpoint-every-*, --tensorboard, --on-nan, "
        "--clip-grad-norm, --dist-timeout and the number of processes may change); auto: the "
        "newest unfinished run with the same config in --run-dir, or a new run when there is none",
    )
    train.add_argument(
        "--nproc",
        metavar="N",
        type=int,
        default=argparse.SUPPRESS,
        help="train in N processes on this machine (one per GPU, or CPU processes), started "
        "through torchrun; --batch-size stays the global batch",
    )
    _add_train_options(train)

    models = commands.add_parser(
        "models",
        help="list the registered models (the tutorial CNN and every torchvision classifier)",
        description="List every model with its parameter count (torchvision's: with the 1000-way "
        "ImageNet head), default input size and whether pretrained weights exist; with NAME, that "
        "model's details.",
    )
    models.add_argument("name", nargs="?", metavar="NAME", help="show one model in detail")
    commands.add_parser("recipes", help="list the named recipes and what they set")
    add_commands(commands)
    return parser


def run_train(arguments: argparse.Namespace, command_line: list[str]) -> int:
    values = vars(arguments).copy()
    values.pop("command")
    nproc = values.pop("nproc", None)
    config_path = values.pop("config", None)
    resume = values.pop("resume", None)
    if "model_args" in values:
        values["model_args"] = dict(values["model_args"])
    if resume is not None and resume != "auto":
        if config_path:
            raise UserError("--resume RUN_DIR uses the run's own config; leave out --config")
        config_path = Path(resume).expanduser() / "config.yaml"
        if not config_path.is_file():
            raise UserError(f"--resume {resume}: not a visionfit run folder (no config.yaml)")
    file_values = read_config_file(config_path) if config_path else {}
    config = build_config(file_values, values, file_name=str(config_path))
    if nproc is not None and nproc != 1:  # options checked above, once, before starting N processes
        from visionfit.distributed import check_global_batch
        from visionfit.launch import launch, strip_nproc

        check_global_batch(config.batch_size, max(1, nproc))
        return launch(nproc, strip_nproc(command_line[command_line.index("train") + 1 :]))
    from visionfit.training import train

    train(config, resume=resume)
    return 0


def run_models(name: str | None = None) -> int:
    from visionfit.models import get_model_spec, list_models
    from visionfit.models.registry import count_parameters

    if name is not None:
        spec = get_model_spec(name)
        accepted = spec.accepted_args()
        details = {
            "name": spec.name,
            "family": spec.family,
            "description": spec.description,
            "parameters": f"{count_parameters(spec.name):,}",
            "input": f"{spec.input_size}x{spec.input_size} px, resized to "
            f"{round(spec.input_size / spec.crop_fraction)} then centre-cropped, {spec.interpolation}",
            "mean": ", ".join(f"{value:.4f}" for value in spec.mean),
            "std": ", ".join(f"{value:.4f}" for value in spec.std),
            "pretrained": spec.pretrained_weights or "none",
            "arguments": "see torchvision's builder"
            if accepted is None
            else ", ".join(sorted(accepted)) or "none",
        }
        for key, value in details.items():
            print(f"{key + ':':<12} {value}")
        return 0
    rows = [
        (
            spec.name,
            f"{count_parameters(spec.name) / 1e6:.2f}M",
            f"{spec.input_size}px",
            "yes" if spec.pretrained_weights else "no",
            spec.family,
        )
        for spec in list_models()
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'name':<{width}}  {'params':>8}  {'input':>5}  pretrained  family")
    for row_name, parameters, size, pretrained, family in rows:
        print(f"{row_name:<{width}}  {parameters:>8}  {size:>5}  {pretrained:<10}  {family}")
    print(
        "\nAlso: your own nn.Module as --model path/to/model.py:ClassName or package.module:ClassName. "
        "`visionfit models NAME` shows one model."
    )
    return 0


def run_recipes() -> int:
    for recipe in RECIPES.values():
        print(f"{recipe.name}: {recipe.description}")
        settings = ", ".join(f"{key}={value}" for key, value in recipe.values.items())
        print(f"  sets: {settings}")
    return 0


def one_line(error: BaseException) -> str:
    """The message of a UserError, also when a DataLoader worker wrapped it in its traceback."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    command_line = list(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(command_line)
    if arguments.command is None:
        parser.print_help()
        return 0
    try:
        if arguments.command == "train":
            return run_train(arguments, command_line)
        if arguments.command == "models":
            return run_models(arguments.name)
        if arguments.command == "recipes":
            return run_recipes()
        if arguments.command in RUNNERS:
            return RUNNERS[arguments.command](arguments)
    except UserError as error:
        print(f"visionfit: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visionfit: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if type(error).__name__ == "UserError" or "UserError: " in str(error):
            print(f"visionfit: error: {one_line(error)}", file=sys.stderr)
            return 2
        raise
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
