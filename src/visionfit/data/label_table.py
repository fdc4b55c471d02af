"""Reading a label file into rows: CSV, TSV or JSON lines; which column holds the file, the labels
(one cell, several labels split by a separator, or one 0/1 column per class) and the split.

Torch-free and pure: `label_file` turns the rows into samples and checks them. Every problem a
user can fix is collected by kind (`Problems`) and reported as one line that counts it and names
the first few rows, after the whole file has been read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionfit.errors import UserError

FILE_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "image", "image_path", "img", "image_id")
LABEL_COLUMNS = ("label", "labels", "class", "classes", "category", "categories", "tags", "target")
SPLIT_COLUMNS = ("split", "subset", "set", "partition")
SEPARATORS = (";", "|")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
SHOWN_ROWS = 3


@dataclass
class Problems:
    """Fixable problems by kind, each with the rows (file line numbers) that have it."""

    source: str
    found: dict[str, tuple[str, list[int]]] = field(default_factory=dict)

    def add(self, what: str, fix: str, line: int) -> None:
        """Record that row `line` has problem `what` (e.g. "name a file that does not exist")."""
        self.found.setdefault(what, (fix, []))[1].append(line)

    def raise_if_any(self) -> None:
        """One line: the first kind of problem, counted, its first rows named, and the fix; the
        other kinds counted after it."""
        if not self.found:
            return
        (what, (fix, lines)), *others = self.found.items()
        message = f"{self.source}: {len(lines)} row(s) {what} ({rows_named(lines)}); {fix}"
        if others:
            message += "; also " + ", ".join(f"{len(rows)} row(s) that {kind}" for kind, (_, rows) in others)
        raise UserError(message)


def rows_named(lines: list[int]) -> str:
    shown = ", ".join(str(line) for line in lines[:SHOWN_ROWS])
    more = f" and {len(lines) - SHOWN_ROWS} more" if len(lines) > SHOWN_ROWS else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


@dataclass(frozen=True)
class Table:
    """A label file's columns and its records (line number, column -> cell)."""

    path: Path
    columns: list[str]
    records: list[tuple[int, dict[str, Any]]]


def read_table(path: Path) -> Table:
    """The whole file: JSON lines by suffix, else CSV or TSV (tab-separated when the first line has
    a tab). A first row that names an image file is data, not a header (columns `file,label`)."""
    if not path.is_file():
        raise UserError(f"label file {path} does not exist; give --labels the CSV, TSV or JSON lines file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"label file {path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except OSError as error:
        raise UserError(f"cannot read label file {path}: {error.strerror}") from None
    table = _json_lines(path, text) if path.suffix.lower() in JSON_SUFFIXES else _delimited(path, text)
    if not table.records:
        raise UserError(f"label file {path} has no rows; it needs a header and one row per image")
    return table


def _json_lines(path: Path, text: str) -> Table:
    records: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, None] = {}
    problems = Problems(str(path))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            problems.add(
                "that are not a JSON object", 'write one {"file": ..., "label": ...} per line', number
            )
            continue
        columns.update(dict.fromkeys(record))
        records.append((number, record))
    problems.raise_if_any()
    return Table(path, list(columns), records)


def _delimited(path: Path, text: str) -> Table:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = "\t" if "\t" in first else ","
    rows = [
        (number, row) for number, row in enumerate(csv.reader(lines, delimiter=delimiter), start=1) if row
    ]
    if not rows:
        return Table(path, [], [])
    from visionfit.data.folder import is_image_name

    _, header = rows[0]
    if any(is_image_name(cell.strip()) for cell in header):  # no header: file, label, ...
        header = ["file", "label"] + [f"column{index}" for index in range(3, len(header) + 1)]
        body = rows
    else:
        header = [cell.strip() for cell in header]
        body = rows[1:]
    problems = Problems(str(path))
    records = []
    for number, row in body:
        if len(row) != len(header):
            problems.add(
                f"with {'more' if len(row) > len(header) else 'fewer'} cells than the header's {len(header)}",
                "quote cells that contain the delimiter, and give every row one cell per column",
                number,
            )
            continue
        records.append((number, dict(zip(header, row, strict=True))))
    problems.raise_if_any()
    return Table(path, header, records)


@dataclass(frozen=True)
class Columns:
    """Which columns hold the file, the labels (one column, or one 0/1 column per class), the split."""

    file: str
    label: str | None
    one_hot: tuple[str, ...]
    split: str | None


def _named(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {column.lower(): column for column in columns}
    return next((lowered[name] for name in wanted if name in lowered), None)


def _given(table: Table, column: str, flag: str) -> str:
    if column not in table.columns:
        raise UserError(
            f"{flag} {column!r} is not a column of {table.path}; its columns are {', '.join(table.columns)}"
        )
    return column


def find_columns(table: Table, file_column: str | None, label_column: str | None) -> Columns:
    """The file column (`--file-column`, else a usual name, else the one whose first cell names an
    image), the split column (a usual name), and the label column (`--label-column`, else a usual
    name, else the only column left) or, failing those, the 0/1 columns as one class each."""
    from visionfit.data.folder import is_image_name

    columns = table.columns
    first = table.records[0][1]
    file = _given(table, file_column, "--file-column") if file_column else _named(columns, FILE_COLUMNS)
    file = file or next((name for name in columns if is_image_name(str(first.get(name, "")).strip())), None)
    if file is None:
        raise UserError(
            f"{table.path} has no column of image files (columns: {', '.join(columns)}); "
            "name it 'file' or pass --file-column NAME"
        )
    split = _named([name for name in columns if name != file], SPLIT_COLUMNS)
    label = _given(table, label_column, "--label-column") if label_column else None
    rest = [name for name in columns if name not in (file, split)]
    label = label or _named(rest, LABEL_COLUMNS)
    if label is not None:
        return Columns(file, label, (), split)
    if len(rest) == 1:
        return Columns(file, rest[0], (), split)
    if len(rest) >= 2 and all(_is_number(cells.get(name)) for name in rest for _, cells in table.records):
        return Columns(file, None, tuple(rest), split)  # one 0/1 column per class
    raise UserError(
        f"{table.path}: cannot tell which column holds the labels (columns: {', '.join(columns)}); "
        "name it 'label', pass --label-column NAME, or give one 0/1 column per class"
    )


def _is_number(cell: Any) -> bool:
    try:
        float(str(cell).strip())
    except ValueError:
        return str(cell).strip().lower() in ("true", "false")
    return True


def _is_binary(cell: Any) -> bool:
    return str(cell).strip().lower() in ("0", "1", "0.0", "1.0", "true", "false")


def detect_separator(table: Table, column: str) -> str | None:
    """`;` or `|` when some label cell holds it (several labels per image), else None."""
    cells = [str(cells.get(column, "")) for _, cells in table.records]
    return next((separator for separator in SEPARATORS if any(separator in cell for cell in cells)), None)


def cell_labels(cell: Any, separator: str | None) -> list[str]:
    """The labels in one cell: a JSON list's items, or the text split by `separator`, stripped."""
    if isinstance(cell, list):
        return [str(item).strip() for item in cell if str(item).strip()]
    if cell is None:
        return []
    text = str(cell).strip()
    parts = text.split(separator) if separator else [text]
    return [part.strip() for part in parts if part.strip()]


def one_hot_labels(cells: dict[str, Any], columns: tuple[str, ...]) -> list[str] | None:
    """The classes whose column holds 1; None when a cell is not 0/1."""
    if not all(_is_binary(cells.get(name)) for name in columns):
        return None
    return [name for name in columns if str(cells.get(name)).strip().lower() in ("1", "1.0", "true")]
