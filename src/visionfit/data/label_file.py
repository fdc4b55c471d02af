"""Label files: `--labels FILE` (CSV, TSV or JSON lines) naming the images and their labels, beside
`--data-dir` for the images. Registers the `labels` dataset.

One label per image gives `FileSamples`; several labels per image (a separator in the cells, or
one 0/1 column per class) give `MultiLabelSamples` and the multi-label task. The file is read and
checked whole before anything is written (`load_label_file`); each fixable problem is one line
naming the first rows that have it (`label_table.Problems`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionfit.data.label_options import LabelFileOptions
from visionfit.data.label_table import (
    Problems,
    cell_labels,
    detect_separator,
    find_columns,
    one_hot_labels,
    read_table,
    rows_named,
)
from visionfit.data.registry import DataRequest, DataSplits, register_dataset
from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.data.samples import Samples

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Row:
    line: int
    path: Path
    labels: tuple[str, ...]
    split: str


def read_rows(path: Path, options: LabelFileOptions, base: Path, split: str | None = None) -> list[Row]:
    """Every row of one label file, checked on its own (missing files, empty labels, unknown
    split values, a file listed twice with different labels); duplicates with equal labels kept once."""
    table = read_table(path)
    columns = find_columns(table, options.file_column, options.label_column)
    separator = options.label_separator
    if columns.label is not None and separator is None:
        separator = detect_separator(table, columns.label)
    problems, rows, seen = Problems(str(path)), [], {}
    for line, cells in table.records:
        name = str(cells.get(columns.file) or "").strip()
        if columns.label is not None:
            labels: list[str] | None = cell_labels(cells.get(columns.label), separator)
        else:
            labels = one_hot_labels(cells, columns.one_hot)
        where = split or SPLIT_NAMES.get(str(cells.get(columns.split) or "").strip().lower(), "")
        if columns.split is None:
            where = where or "train"
        file = os.path.join(base, name)  # strings, not Paths: 10,000 rows in well under a second
        row = Row(line, Path(file), tuple(sorted(labels or ())), where)
        problem = _row_problem(name, base, labels, row, seen.get(file))
        if problem is not None:
            problems.add(*problem, line)
        elif file not in seen:
            seen[file] = row
            rows.append(row)
    problems.raise_if_any()
    return rows


def _row_problem(
    name: str, base: Path, labels: list[str] | None, row: Row, earlier: Row | None
) -> tuple[str, str] | None:
    """What is wrong with one row (what the rows have, the fix), or None."""
    from visionfit.data.folder import is_image_name

    if not name:
        return "with no file name", "give every row the image it labels"
    if not is_image_name(os.path.basename(name)):
        return "that name no image file", "give image files (.jpg, .png, ...) only"
    if not os.path.isfile(row.path):
        return f"that name a file that is not there (under {base})", PATH_FIX
    if labels is None:
        return "with a class column that is not 0 or 1", "write 1 for the classes shown, else 0"
    if not labels:
        return "with an empty label", "give every image at least one label, or drop the row"
    if not row.split:
        return "with an unknown split value (not train, val or test)", "use train, val or test"
    if earlier is not None and earlier.labels != row.labels:
        where = f"first at line {earlier.line}"
        return (
            f"that list a file again with different labels ({where})",
            "keep one row per file, with all its labels",
        )
    if earlier is not None and earlier.split != row.split:
        return (
            f"that list a file again in another split (first at line {earlier.line})",
            "each image belongs to one split",
        )
    return None


PATH_FIX = (
    "paths are relative to --data-dir when given, else to the label file's folder; fix them or --data-dir"
)


def class_list(
    rows: list[Row], names: tuple[str, ...] | None, source: str
) -> tuple[list[str], dict[str, int]]:
    """The classes in order and each label's index: numeric ids sorted as numbers and kept as names
    (or named by `--class-names`: id k is the k-th name); other labels sorted, or in
    `--class-names`' order."""
    found = sorted({label for row in rows for label in row.labels})
    numeric = all(label.lstrip("-").isdigit() for label in found)
    if names is None:
        classes = sorted(found, key=int) if numeric else found
        return classes, {label: index for index, label in enumerate(classes)}
    if len(set(names)) != len(names):
        raise UserError(f"--class-names lists a name twice: {', '.join(names)}")
    if numeric:
        index = {label: int(label) for label in found}
        bad = [row.line for row in rows if any(not 0 <= index[label] < len(names) for label in row.labels)]
        what = f"with a class id outside 0..{len(names) - 1} (--class-names has {len(names)} names)"
    else:
        index = {label: names.index(label) for label in found if label in names}
        bad = [row.line for row in rows if any(label not in index for label in row.labels)]
        what = "with a label that --class-names does not list"
    if bad:
        raise UserError(
            f"{source}: {len(bad)} row(s) {what} ({rows_named(bad)}); fix the labels or --class-names"
        )
    return list(names), index


def check_classes_present(
    rows: list[Row], index: dict[str, int], classes: list[str], split: str, source: str
) -> None:
    present = {index[label] for row in rows for label in row.labels}
    missing = [name for number, name in enumerate(classes) if number not in present]
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        shown = ", ".join(missing[:SHOWN]) + more
        raise UserError(
            f"{source}: {len(missing)} class(es) have no images in the {split} split ({shown}); "
            f"add {split} rows for them or drop the class"
        )


SHOWN = 3


def _splits(rows: list[Row], test_rows: list[Row], source: str) -> dict[str, list[Row]]:
    """Rows by split; a file in two splits is refused (the held-out images would be trained on)."""
    splits: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for row in rows + test_rows:
        splits[row.split].append(row)
    trained = {row.path for row in splits["train"]}
    leaked = [row.line for row in splits["val"] + splits["test"] if row.path in trained]
    if leaked:
        raise UserError(
            f"{source}: {len(leaked)} held-out row(s) name a file that is also in train "
            f"({rows_named(leaked)}); each image belongs to one split"
        )
    return splits


def task_of(rows: list[Row], task: str, source: str) -> str:
    """`multilabel` when asked, or (auto) when some image has several labels; else `single`."""
    several = [row.line for row in rows if len(row.labels) > 1]
    if task == "single" and several:
        raise UserError(
            f"{source}: {len(several)} row(s) have several labels ({rows_named(several)}) but --task is "
            "single; pass --task multilabel or give one label per image"
        )
    return "multilabel" if task == "multilabel" or (task == "auto" and several) else "single"


def samples_of(rows: list[Row], index: dict[str, int], classes: list[str], task: str) -> Samples:
    from visionfit.data.samples import FileSamples, MultiLabelSamples

    if task == "multilabel":
        targets = [tuple(sorted(index[label] for label in row.labels)) for row in rows]
        return MultiLabelSamples([row.path for row in rows], targets, len(classes))
    return FileSamples([row.path for row in rows], [index[row.labels[0]] for row in rows])


def read_files(options: LabelFileOptions, data_dir: str | None) -> tuple[list[Row], list[Row]]:
    """The label file's rows and --test-labels' (paths relative to --data-dir, else to each file)."""
    path = Path(options.labels).expanduser()
    rows = read_rows(path, options, Path(data_dir).expanduser() if data_dir else path.parent)
    if not options.test_labels:
        return rows, []
    test_path = Path(options.test_labels).expanduser()
    test_base = Path(data_dir).expanduser() if data_dir else test_path.parent
    return rows, read_rows(test_path, options, test_base, split="test")


def load_label_file(request: DataRequest) -> DataSplits:
    """The `labels` dataset: the label file (and `--test-labels`) read and checked whole, the
    classes, the task, and train and held-out samples. The held-out split is the file's `val`
    rows, else its `test` rows (or --test-labels), else a seeded share of train (--val-fraction)."""
    options = request.label_file
    if options is None:
        raise UserError("--dataset labels needs --labels FILE (CSV, TSV or JSON lines)")
    path = Path(options.labels).expanduser()
    rows, test_rows = read_files(options, request.data_dir)
    source = str(path)
    classes, index = class_list(rows + test_rows, options.class_names, source)
    task = task_of(rows + test_rows, options.task, source)
    splits = _splits(rows, test_rows, source)
    check_classes_present(splits["train"], index, classes, "train", source)
    held_name = "val" if splits["val"] else "test"
    if splits["val"] and request.val_fraction is not None:
        raise UserError(
            f"--val-fraction holds validation images out of train, but {source} already has val rows; "
            "leave --val-fraction out"
        )
    if splits["val"] and splits["test"]:
        request.notify(f"{len(splits['test'])} test rows are set aside: the val rows are the held-out split")
    train = samples_of(splits["train"], index, classes, task)
    if splits[held_name]:
        check_classes_present(splits[held_name], index, classes, held_name, source)
        held_out = samples_of(splits[held_name], index, classes, task)
        where = f"{held_name} rows"
    else:
        # --val-fraction when given, else the default held-out share (--test-fraction's 0.1)
        fraction = request.val_fraction if request.val_fraction is not None else request.test_fraction
        train, held_out = hold_out(
            train, len(classes), fraction, request.seed, request.val_fraction is not None
        )
        where = f"{fraction:g} of train held out (seed {request.seed})"
    if len(train) == 0 or len(held_out) == 0:
        raise UserError(f"{source} has too few images for a train and a held-out split; add rows")
    if task == "multilabel":
        request.notify(f"{source}: several labels per image: a multi-label task (--task multilabel)")
    validation = held_name == "val" or not splits[held_name]
    held = "val" if validation else "test"
    description = (
        f"{len(classes)} classes from {source}, {where} ({len(train)} train / {len(held_out)} {held})"
    )
    aside = (
        samples_of(splits["test"], index, classes, task) if held_name == "val" and splits["test"] else None
    )
    return DataSplits(
        "labels", classes, train, held_out, description, task=task, validation=validation, set_aside=aside
    )


def hold_out(
    samples: Samples, num_classes: int, fraction: float, seed: int, stratify_sets: bool = False
) -> tuple[Samples, Samples]:
    """A seeded share of `samples` held out: stratified by class for one label per image; for
    several, by iterative stratification with --val-fraction (`stratify_sets`), else the plain
    random share that runs without it have always drawn."""
    from visionfit.data.folder import stratified_split
    from visionfit.data.samples import FileSamples
    from visionfit.data.splits import VALIDATION_SEED_OFFSET, stratified_indices

    if isinstance(samples, FileSamples):
        return stratified_split(samples, num_classes, fraction, seed)
    if not stratify_sets:
        return samples.random_split(fraction, seed)
    kept, held_out = stratified_indices(samples.label_tensor(), fraction, seed + VALIDATION_SEED_OFFSET)
    return samples.subset(kept), samples.subset(held_out)


register_dataset(
    "labels",
    load_label_file,
    description="images listed in a label file (--labels FILE: CSV, TSV or JSON lines), "
    "one or several labels per image",
)
