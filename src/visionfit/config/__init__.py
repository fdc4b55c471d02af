"""The training configuration, layered defaults → recipe → config file → CLI flags.

`fields.TrainConfig` is the typed schema; `validation` holds every check of it; this module builds a
config from its layers, reads and writes config files, and is where the rest of visionfit imports
them from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

from visionfit.config.fields import TrainConfig, config_fields, flag_name
from visionfit.config.validation import check_config
from visionfit.data.registry import default_recipe
from visionfit.errors import UserError, did_you_mean
from visionfit.recipes import RECIPES, recipe_names

logger = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "config_fields",
    "config_from",
    "flag_name",
    "read_config_file",
    "save_config",
    "saved_config",
]


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Turn a value from a file or a flag into the field's type, or say which key is wrong."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return _coerce(name, value, inner)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and len(items) == len(arguments):
            try:
                return tuple(float(item) for item in items)
            except (TypeError, ValueError):
                pass
        raise UserError(f"{name} needs {len(arguments)} comma-separated numbers, got {value!r}")
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    type_name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"{name} must be {type_name}, got {value!r}")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy of `config` with `overrides` applied; unknown keys are an error naming `source`."""
    hints = typing.get_type_hints(TrainConfig)
    known = {config_field.name for config_field in config_fields()}
    changes = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(f"unknown option {key!r} in {source}{did_you_mean(name, known)}")
        changes[name] = _coerce(name, value, hints[name])
    return dataclasses.replace(config, **changes)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping from a .yaml/.yml, .json or .toml file (a saved run config works too)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise UserError(f"config file {path} must end in .yaml, .yml, .json or .toml")
    import yaml

    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as error:  # JSON and TOML errors are ValueErrors
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot parse config file {path}: {first_line}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    return data


def build_config(
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
    *,
    file_name: str = "config file",
    flags_name: str = "command-line flags",
) -> TrainConfig:
    """Layer defaults → recipe → config file → flags, then validate: a finished config."""
    config = _layered(dict(file_values or {}), dict(flag_values or {}), file_name, flags_name)
    check_config(config)
    return config


def saved_config(values: dict[str, Any], source: str) -> TrainConfig:
    """A run's config as it saved it, layered like a config file but not checked again: it was
    checked when the run started, and a resumed run checks its config once, with its changes."""
    return _layered(dict(values), {}, source, "")


def _layered(
    file_values: dict[str, Any], flag_values: dict[str, Any], file_name: str, flags_name: str
) -> TrainConfig:
    """Defaults → recipe → file → flags. The recipe is looked up first (a flag beats the file) so
    that the file and flags override it."""
    file_values = older_split_names(file_values, file_name)
    recipe = flag_values.get("recipe", file_values.get("recipe"))
    following: dict[str, Any] = {}  # what the pictures add to a recipe they chose (config.defaults)
    if recipe is None:
        recipe, following = _default_recipe({**file_values, **flag_values})
    config = TrainConfig()
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserError(
                f"unknown recipe {recipe!r}; choose from {', '.join(recipe_names())}"
                f"{did_you_mean(str(recipe), RECIPES)}"
            )
        values = {**RECIPES[recipe].values, "recipe": recipe, **following}
        config = apply_overrides(config, values, f"recipe {recipe}")
    config = apply_overrides(config, file_values, file_name)
    return apply_overrides(config, flag_values, flags_name)


# Options every config.yaml saved by a run before --test-fraction existed holds.
SAVED_BEFORE_TEST_FRACTION = {
    "dataset",
    "data_dir",
    "val_fraction",
    "seed",
    "epochs",
    "lr",
    "run_dir",
    "precision",
}


def older_split_names(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A run's config.yaml saved before --test-fraction existed used `val_fraction` for the share held
    out for testing: it still loads, as `test_fraction`, with a one-line notice. A saved config holds
    every option, which tells it from a hand-written file that means validation by --val-fraction."""
    if "test_fraction" in values or not set(values) >= SAVED_BEFORE_TEST_FRACTION:
        return values
    values["test_fraction"] = values.pop("val_fraction")
    logger.info(
        f"{source}: val_fraction {values['test_fraction']} is the share held out for testing in a "
        "config from before --test-fraction; read as test_fraction (--val-fraction now holds out validation)"
    )
    return values


def _default_recipe(values: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The recipe of the data these settings name when they name no model, and the defaults it
    adds: the source's own (`fast` for CIFAR-10 and its sample), else the one the pictures under
    --data-dir or beside --labels choose (`defaults.data_defaults`, said in one line)."""
    if "model" in values:
        return None, {}
    if not values.get("labels"):
        recipe = default_recipe(values.get("dataset"), values.get("data_dir"))
        if recipe is not None:
            return recipe, {}
    from visionfit.config.defaults import data_defaults

    return data_defaults(values) or (None, {})


def config_from(config: TrainConfig | None, overrides: dict[str, Any], source: str) -> TrainConfig:
    """`config` with `overrides`; without a config, built as the CLI builds it, so that a `recipe=`
    override (or CIFAR-sized data without a model) brings the recipe's defaults."""
    if config is None:
        return build_config(flag_values=overrides, flags_name=source)
    config = apply_overrides(config, overrides, source)
    check_config(config)
    return config


def save_config(config: TrainConfig, path: Path, notes: tuple[str, ...] = ()) -> None:
    """Write `config` as YAML; `notes` (what the run derived from it, such as what --exclude left
    out) go in comment lines, so the file still reruns with --config."""
    import yaml

    header = "# visionfit training config; rerun with: visionfit train --config THIS_FILE\n"
    header += "".join(f"# {note}\n" for note in notes)
    path.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
