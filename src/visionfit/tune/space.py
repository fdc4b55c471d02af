"""The search space: which train options a trial draws, and from what.

A space file is a YAML mapping of train options (the config's names, `lr` or `weight-decay`) to
  {low: 0.01, high: 1, log: true}      a range (an int option draws ints; `step` optional)
  {choices: [none, trivialwide]}       one of these values
  0.1   or   {value: {...}}            a fixed value, the same in every trial
Without a file, `default_space` gives the recipe's: ranges around its own values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, config_fields
from visionfit.errors import UserError, did_you_mean

RANGE_KEYS = {"low", "high", "log", "step"}
# Options a trial may never draw: where the data and the trial's run folder are, and what the trials
# are scored on (the same validation images for every trial, or their scores do not compare).
NOT_SEARCHABLE = (
    "dataset",
    "data_dir",
    "run_dir",
    "name",
    "recipe",
    "device",
    "val_fraction",
    "test_fraction",
    "labels",
    "test_labels",
    "best_metric",
)


@dataclass(frozen=True)
class Parameter:
    """One searched option: a range (`low`, `high`, `log`, `step`) or `choices`."""

    name: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value `trial` draws for this option."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {', '.join(str(choice) for choice in self.choices)}"
        scale = "log" if self.log else "linear"
        return f"{self.name}: {self.kind} {self.low:g} to {self.high:g} ({scale})"


@dataclass(frozen=True)
class SearchSpace:
    """The searched options and the fixed ones, in the order they were given."""

    parameters: tuple[Parameter, ...]
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One trial's option values: its draws and the fixed values."""
        values = dict(self.fixed)
        for parameter in self.parameters:
            values[parameter.name] = parameter.suggest(trial)
        return values

    def describe(self) -> list[str]:
        lines = [parameter.describe() for parameter in self.parameters]
        return lines + [f"{name}: {value!r} (fixed)" for name, value in self.fixed.items()]


def _field_kinds() -> dict[str, type]:
    """Each option's value type (int, float, str, bool, ...), optional types unwrapped."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {}
    for config_field in config_fields():
        annotation = hints[config_field.name]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            (annotation,) = [
                argument for argument in typing.get_args(annotation) if argument is not type(None)
            ]
        kinds[config_field.name] = typing.get_origin(annotation) or annotation
    return kinds


def parse_parameter(key: str, spec: Any, where: str) -> Parameter | tuple[str, Any]:
    """A `Parameter` from one entry of a space file, or (name, value) for a fixed option."""
    kinds = _field_kinds()
    name = str(key).replace("-", "_")
    if name not in kinds:
        raise UserError(f"{where}: unknown train option {key!r}{did_you_mean(name, kinds)}")
    if name in NOT_SEARCHABLE:
        raise UserError(f"{where}: {key} cannot be searched; give it to tune as a flag instead")
    if not isinstance(spec, dict):
        return name, spec
    if set(spec) == {"value"}:
        return name, spec["value"]
    if set(spec) == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {key}: choices must be a non-empty list")
        return Parameter(name, "choice", choices=tuple(choices))
    if not {"low", "high"} <= set(spec) or not set(spec) <= RANGE_KEYS:
        raise UserError(
            f"{where}: {key} must be a value, {{choices: [...]}} or {{low: L, high: H, log: true|false, "
            f"step: S}}; got keys {', '.join(map(str, spec))}"
        )
    return _range(name, spec, kinds[name], where)


def _range(name: str, spec: dict[str, Any], kind: type, where: str) -> Parameter:
    if kind not in (int, float):
        raise UserError(f"{where}: {name} is not a number; give it {{choices: [...]}} instead")
    try:
        low, high = float(spec["low"]), float(spec["high"])
        step = float(spec["step"]) if spec.get("step") is not None else None
    except (TypeError, ValueError):
        raise UserError(f"{where}: {name}: low, high and step must be numbers") from None
    log = bool(spec.get("log", False))
    if not math.isfinite(low) or not math.isfinite(high) or low >= high:
        raise UserError(f"{where}: {name}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise UserError(f"{where}: {name}: a log range needs low > 0 (got {low:g})")
    if log and step is not None:
        raise UserError(f"{where}: {name}: a log range takes no step")
    return Parameter(name, "int" if kind is int else "float", low, high, log, step)


def parse_space(entries: dict[str, Any], where: str = "space") -> SearchSpace:
    """A `SearchSpace` from a mapping of option names to range, choices or fixed value."""
    parameters, fixed = [], {}
    for key, spec in entries.items():
        parsed = parse_parameter(key, spec, where)
        if isinstance(parsed, Parameter):
            parameters.append(parsed)
        else:
            fixed[parsed[0]] = parsed[1]
    if not parameters:
        raise UserError(f"{where} names no option to search (every entry is a fixed value)")
    return SearchSpace(tuple(parameters), fixed)


def read_space(path: str | Path) -> SearchSpace:
    """The search space of a YAML file."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"space file {path} does not exist")
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"cannot parse space file {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(entries, dict):
        raise UserError(f"space file {path} must hold a mapping of train options to ranges or choices")
    return parse_space(entries, f"space file {path}")


def default_space(config: TrainConfig) -> SearchSpace:
    """The search around a config's own values (its recipe's): learning rate from a tenth to three
    times its value, weight decay, label smoothing, batch size around its own, augmentation policy
    and strength, MixUp/CutMix, EMA; the epochs stay the config's (a pruned search compares
    epochs of one schedule)."""
    entries: dict[str, Any] = {
        "lr": {"low": config.lr / 10, "high": config.lr * 3, "log": True},
        "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "batch_size": {"choices": sorted({max(8, config.batch_size // 2), config.batch_size})},
    }
    if config.recipe == "tutorial":  # the tutorial's plain SGD: its momentum too
        entries["momentum"] = {"low": 0.0, "high": 0.95}
    else:
        entries["auto_augment"] = {"choices": ["none", "trivialwide", "randaugment"]}
        entries["random_erasing"] = {"low": 0.0, "high": 0.5}
        entries["mixup"] = {"choices": [0.0, 0.2]}
        entries["cutmix"] = {"choices": [0.0, 1.0]}
        entries["ema"] = {"choices": [0.0, 0.999]}
    if config.recipe == "transfer":
        entries["backbone_lr_scale"] = {"low": 0.01, "high": 1.0, "log": True}
    return parse_space(entries, f"the default space of {config.recipe or 'the defaults'}")
