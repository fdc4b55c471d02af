"""The dataset registry: every source of data by name, like the model registry.

A source module declares itself with `register_dataset(name, load, ...)`; `--dataset`'s choices, its
help and the auto-detection from a bare `--data-dir` all come from here. The CLI reads this registry
to build `--help`, so declaring a source must cost nothing: the declaring modules keep torch out of
their import, and `load` may name its function as "module:function", imported on first use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionfit.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from visionfit.data.label_options import LabelFileOptions
    from visionfit.data.samples import Samples

# One-line messages go through logging: quiet in a library call, printed by the CLI.
logger = logging.getLogger(__name__)
# Modules whose sources are built in; importing one registers its datasets.
BUILTIN_SOURCES = ("visionfit.data.cifar", "visionfit.data.folder", "visionfit.data.label_file")
DEFAULT_DATASET = "cifar10"


@dataclass
class DataSplits:
    """The classes and the train and test samples of one dataset."""

    dataset: str
    classes: list[str]
    train: Samples
    test: Samples
    description: str
    # "single": one class per image (int64 labels); "multilabel": a set per image ((N, C) 0/1 labels).
    task: str = "single"
    # Whether the held-out split is validation data (a label file's val rows, or a share of train),
    # on which a multi-label run may choose its thresholds; test rows are not.
    validation: bool = False

    @property
    def image_side(self) -> int | None:
        """The side of the (square, uniform) in-memory images, if the dataset has one."""
        return self.train.image_side()

    def without(self, bad: set[Path]) -> DataSplits:
        return DataSplits(
            self.dataset,
            self.classes,
            self.train.without(bad),
            self.test.without(bad),
            self.description,
            self.task,
            self.validation,
        )


@dataclass(frozen=True)
class DataRequest:
    """What a source's load function gets: the user's folder, the held-out share and seed for
    sources that split, `notify` for one-line messages, and whether the user named no data at all
    (then the default source may fall back to data it ships)."""

    data_dir: str | None
    val_fraction: float = 0.1
    seed: int = 0
    notify: Callable[[str], None] = logger.info
    unnamed: bool = False
    download: bool = True  # False: only data already on this machine (export's checks never download)
    label_file: LabelFileOptions | None = None  # --labels and its options (the `labels` source)


Loader = Callable[[DataRequest], DataSplits]


@dataclass(frozen=True)
class DatasetSource:
    """A registered source: how to load it and what the CLI says about it."""

    name: str
    loader: Loader | str  # the function, or "module:function" to import when the source loads
    description: str
    # What --data-dir must name when the source cannot do without it ("ROOT, where ...").
    needs_data_dir: str | None = None
    # Whether a folder given as a bare --data-dir holds this dataset (auto-detection), if it can
    # tell, and what such a folder holds, for the line that says so.
    recognises: Callable[[Path], bool] | None = None
    holds: str = ""
    # The recipe whose defaults apply when the data are this source and no model or recipe is named.
    recipe: str | None = None

    def load(self, request: DataRequest) -> DataSplits:
        loader = self.loader
        if isinstance(loader, str):
            module, _, function = loader.partition(":")
            loader = getattr(importlib.import_module(module), function)
        return loader(request)


_SOURCES: dict[str, DatasetSource] = {}


def register_dataset(name: str, load: Loader | str, *, description: str, **details: Any) -> None:
    """Register `load(request) -> DataSplits` (or its "module:function") as dataset `name`."""
    if name in _SOURCES:
        raise ValueError(f"dataset {name!r} is registered twice")
    _SOURCES[name] = DatasetSource(name, load, description, **details)


def _sources() -> dict[str, DatasetSource]:
    for module in BUILTIN_SOURCES:
        importlib.import_module(module)
    return _SOURCES


def dataset_names() -> tuple[str, ...]:
    return tuple(_sources())


def get_dataset(name: str) -> DatasetSource:
    sources = _sources()
    if name not in sources:
        raise UserError(
            f"unknown dataset {name!r}; choose from {', '.join(sources)}{did_you_mean(name, sources)}"
        )
    return sources[name]


def recognise(data_dir: Path) -> DatasetSource | None:
    """The source that says it holds the folder `data_dir`, in registration order."""
    if not data_dir.is_dir():
        return None
    return next(
        (source for source in _sources().values() if source.recognises and source.recognises(data_dir)), None
    )


def load_data(
    dataset: str | None,
    data_dir: str | None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    notify: Callable[[str], None] = logger.info,
    download: bool = True,
    label_file: LabelFileOptions | None = None,
) -> DataSplits:
    """Load a dataset by name; without a name, the one a bare `data_dir` holds (said through
    `notify` when it is not the default), else the default source. `download=False`: a source
    that would download raises `UserError` instead. `label_file`: the images and labels a label
    file lists (the `labels` source, chosen when no dataset is named)."""
    request = DataRequest(
        data_dir,
        val_fraction,
        seed,
        notify,
        unnamed=dataset is None and not data_dir and label_file is None,
        download=download,
        label_file=label_file,
    )
    if label_file is not None and dataset not in (None, "labels"):
        raise UserError(f"--labels reads the labels dataset; drop --dataset {dataset} or --labels")
    if label_file is not None:
        dataset = "labels"
    elif dataset is None and data_dir:
        found = recognise(Path(data_dir).expanduser())
        if found is not None and found.name != DEFAULT_DATASET:
            notify(f"{data_dir} holds {found.holds}: reading it as --dataset {found.name}")
        dataset = found.name if found is not None else DEFAULT_DATASET
    source = get_dataset(dataset or DEFAULT_DATASET)
    check_data_dir(source.name, data_dir)
    return source.load(request)


def check_data_dir(dataset: str, data_dir: str | None) -> None:
    needed = get_dataset(dataset).needs_data_dir
    if needed and not data_dir:
        raise UserError(f"--dataset {dataset} needs --data-dir {needed}")


def default_recipe(dataset: str | None, data_dir: str | None) -> str | None:
    """The recipe for data named this way when no model is named: the source's own (CIFAR-10:
    `fast`), or none for a folder no source recognises."""
    if dataset is not None:
        return get_dataset(dataset).recipe if dataset in _sources() else None
    if data_dir is None:
        return get_dataset(DEFAULT_DATASET).recipe
    found = recognise(Path(str(data_dir)).expanduser())
    return found.recipe if found is not None else None
