"""What `--labels` and its flags say about reading a label file: a plain record, imported by the
registry's `DataRequest` and by whoever turns a config into a data request (train, eval, export)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelFileOptions:
    """How to read a label file (the `--labels` group of flags)."""

    labels: str
    test_labels: str | None = None
    file_column: str | None = None
    label_column: str | None = None
    label_separator: str | None = None
    class_names: tuple[str, ...] | None = None
    task: str = "auto"


def label_file_options(values: Mapping[str, Any]) -> LabelFileOptions | None:
    """The label-file options among a config's values (a saved config or `TrainConfig` as a dict);
    None without `labels`."""
    if not values.get("labels"):
        return None
    names = values.get("class_names")
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",")]
    return LabelFileOptions(
        labels=str(values["labels"]),
        test_labels=values.get("test_labels"),
        file_column=values.get("file_column"),
        label_column=values.get("label_column"),
        label_separator=values.get("label_separator"),
        class_names=tuple(names) if names else None,
        task=values.get("task") or "auto",
    )
