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
from dataclasses import dataclass, replace
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
    """The classes and the train, test and (when the data have one) validation samples of one
    dataset. `held_out` names the split in the `test` place: "val" in `for_epochs`' view."""

    dataset: str
    classes: list[str]
    train: Samples
    test: Samples
    description: str
    # "single": one class per image (int64 labels); "multilabel": a set per image ((N, C) 0/1 labels).
    task: str = "single"
    # Whether the held-out split (the `test` place) is validation data: a label file's val rows or
    # its share of train, or `for_epochs`' view of data with a validation split. Best, a multi-label
    # run's thresholds and the end-of-train temperature are chosen on it; never on test data.
    validation: bool = False
    val: Samples | None = None  # the validation split, when the data have one apart from test
    held_out: str = "test"
    # A label file's test rows when its val rows are the held-out split: no run reads them (they
    # are set aside, as the run says); doctor checks them with the rest.
    set_aside: Samples | None = None

    @property
    def held_out_name(self) -> str:
        """What the held-out split is called where people read it: "val" when it is validation data
        (a label file's val rows or its share of train too, which sit in the `test` place)."""
        return "val" if self.validation else "test"

    @property
    def image_side(self) -> int | None:
        """The side of the (square, uniform) in-memory images, if the dataset has one."""
        return self.train.image_side()

    def without(self, bad: set[Path]) -> DataSplits:
        val = self.val.without(bad) if self.val is not None else None
        aside = self.set_aside.without(bad) if self.set_aside is not None else None
        return replace(
            self, train=self.train.without(bad), test=self.test.without(bad), val=val, set_aside=aside
        )

    def for_epochs(self) -> DataSplits:
        """The splits as the epochs see them: with a validation split, the validation samples in
        the held-out place and no test samples at all, so that nothing the epochs run (best,
        early stopping, the feature cache) can read the test set; without one, these splits."""
        if self.val is None:
            return self
        return replace(self, test=self.val, val=None, held_out="val", validation=True)


@dataclass(frozen=True)
class SplitShares:
    """How a dataset's samples are split: the share of each class held out for testing (folders
    without splits), the share of train held out for validation (None: no validation split), and
    the seed of both draws."""

    test_fraction: float = 0.1
    val_fraction: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class DataRequest:
    """What a source's load function gets: the user's folder, the share held out for testing and
    the seed for sources that split, `notify` for one-line messages, and whether the user named no
    data at all (then the default source may fall back to data it ships). `val_fraction` is held
    out of train by `load_data` after the source loads, for every source alike."""

    data_dir: str | None
    test_fraction: float = 0.1
    seed: int = 0
    notify: Callable[[str], None] = logger.info
    unnamed: bool = False
    download: bool = True  # False: only data already on this machine (export's checks never download)
    label_file: LabelFileOptions | None = None  # --labels and its options (the `labels` source)
    val_fraction: float | None = None


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
    shares: SplitShares = SplitShares(),
    download: bool = True,
    label_file: LabelFileOptions | None = None,
) -> DataSplits:
    """Load a dataset by name; without a name, the one a bare `data_dir` holds (said through the
    `visionfit` logger when it is not the default), else the default source. `download=False`: a source
    that would download raises `UserError` instead. `label_file`: the images and labels a label
    file lists (the `labels` source, chosen when no dataset is named). `shares.val_fraction`: that
    share of every class held out of train for validation (`hold_out_validation`; a label file holds out
    its own share, `label_file.hold_out`)."""
    test_fraction, val_fraction, seed = shares.test_fraction, shares.val_fraction, shares.seed
    request = DataRequest(
        data_dir,
        test_fraction,
        seed,
        logger.info,
        unnamed=dataset is None and not data_dir and label_file is None,
        download=download,
        label_file=label_file,
        val_fraction=val_fraction,
    )
    if label_file is not None and dataset not in (None, "labels"):
        raise UserError(f"--labels reads the labels dataset; drop --dataset {dataset} or --labels")
    if label_file is not None:
        dataset = "labels"
    elif dataset is None and data_dir:
        found = recognise(Path(data_dir).expanduser())
        if found is not None and found.name != DEFAULT_DATASET:
            logger.info(f"{data_dir} holds {found.holds}: reading it as --dataset {found.name}")
        dataset = found.name if found is not None else DEFAULT_DATASET
    source = get_dataset(dataset or DEFAULT_DATASET)
    check_data_dir(source.name, data_dir)
    data = source.load(request)
    # A label file without a test split holds out its own validation (its held-out split).
    if val_fraction is None or (source.name == "labels" and data.validation):
        return data
    return hold_out_validation(data, val_fraction, seed)


def hold_out_validation(data: DataSplits, fraction: float, seed: int) -> DataSplits:
    """`data` with `fraction` of each class of its training samples moved into a validation split."""
    if data.val is not None:
        raise UserError(
            f"--val-fraction holds validation images out of train, but {data.dataset} already has a "
            "validation split (a val/ folder or a split column); leave --val-fraction out"
        )
    from visionfit.data.splits import VALIDATION_SEED_OFFSET, stratified_indices

    labels = data.train.label_tensor()  # (N, C) with several labels per image: iterative stratification
    kept, held_out = stratified_indices(labels, fraction, seed + VALIDATION_SEED_OFFSET)
    if not held_out or not kept:
        raise UserError(
            f"--val-fraction {fraction:g} of {len(labels)} training images leaves no validation or no "
            "training images; add images or change --val-fraction"
        )
    description = (
        f"{data.description}; validation: {fraction:g} of each class of train held out "
        f"({len(kept)} train / {len(held_out)} val, seed {seed})"
    )
    return replace(
        data, train=data.train.subset(kept), val=data.train.subset(held_out), description=description
    )


def saved_split_settings(config: dict[str, Any]) -> SplitShares:
    """`load_data`'s split arguments from a run's saved config (a checkpoint's, an export's), so
    that eval and export see the run's own splits. A config from before --test-fraction existed
    used --val-fraction for the test share."""
    if "test_fraction" in config:
        test_fraction, val_fraction = config["test_fraction"], config.get("val_fraction")
    else:
        test_fraction, val_fraction = config.get("val_fraction", 0.1), None
    return SplitShares(test_fraction, val_fraction, config.get("seed", 0))


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
