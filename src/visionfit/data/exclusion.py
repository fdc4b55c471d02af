"""`train --exclude issues.csv`: leave out the files a `visionfit doctor` report lists.

The CSV needs only a `file` column (doctor's issues.csv has it, with `kind` saying why); rows
without a file (a whole class's issue) and pictures held in memory (`split#index`) are ignored.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any

from visionfit.data.registry import DataSplits
from visionfit.errors import UserError

EXCLUDED_BY = "excluded by "  # how a left-out file's reason starts (skipped_images.txt, the run's notes)


def read_exclusions(csv_path: str | Path) -> dict[Path, str]:
    """The files listed in `csv_path` (absolute paths), each with why it is listed."""
    path = Path(csv_path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except OSError as error:
        raise UserError(f"--exclude {csv_path}: cannot read it ({error.strerror})") from None
    if rows and "file" not in rows[0]:
        raise UserError(f"--exclude {csv_path}: no 'file' column; pass the issues.csv of `visionfit doctor`")
    listed: dict[Path, str] = {}
    for row in rows:
        name = (row.get("file") or "").strip()
        if name and "#" not in Path(name).name:
            file = Path(os.path.abspath(Path(name).expanduser()))
            listed.setdefault(file, row.get("kind") or "listed")
    return listed


def exclude_files(data: DataSplits, csv_path: str | Path) -> tuple[DataSplits, list[tuple[Path, str]]]:
    """`data` without the files `csv_path` lists, and the files left out with the reason."""
    listed = read_exclusions(csv_path)
    csv_file = os.path.abspath(Path(csv_path).expanduser())
    files = data.train.files() + data.test.files() + (data.val.files() if data.val is not None else [])
    present = [Path(os.path.abspath(file)) for file in files]  # every split doctor lists, val too
    found = [(file, f"{EXCLUDED_BY}{csv_file} ({listed[file]})") for file in present if file in listed]
    absolute = {os.path.abspath(file): file for file in files}
    bad = {absolute[str(file)] for file, _ in found}
    return data.without(bad), found


def exclusion_kinds(found: list[tuple[Path, str]]) -> Counter[str]:
    """How many of the files `--exclude` left out were listed for each kind."""
    return Counter(reason.rsplit("(", 1)[-1].rstrip(")") for _, reason in found)


def summarize_exclusions(found: list[tuple[Path, str]]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in exclusion_kinds(found).most_common())


def exclusion_record(csv_path: str | None, skipped: list[tuple[Path, str]]) -> dict[str, Any] | None:
    """What `--exclude csv_path` left out of a run, from the run's left-out files: the CSV
    (absolute), how many pictures, and how many of each kind; None without --exclude."""
    if not csv_path:
        return None
    found = [(file, reason) for file, reason in skipped if reason.startswith(EXCLUDED_BY)]
    return {
        "file": os.path.abspath(Path(csv_path).expanduser()),
        "count": len(found),
        "kinds": dict(exclusion_kinds(found).most_common()),
    }
