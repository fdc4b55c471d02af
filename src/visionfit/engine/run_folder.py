"""One folder per run: DIR/NAME/ with config.yaml, run.json (status), events, metrics and
checkpoints. A finished run is never overwritten."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from visionfit.errors import UserError

STATUS_FILE = "run.json"


def _default_name(dataset: str, model: str) -> str:
    return f"{dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_folder(run_dir: str | Path, name: str | None, *, dataset: str, model: str) -> Path:
    """Make a fresh run folder. An explicit name that already holds a run is refused."""
    parent = Path(run_dir).expanduser()
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the run folder {parent}: {error.strerror}; choose another with --run-dir"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"the run folder {parent} is not writable; choose another with --run-dir")
    if name is not None:
        folder = parent / name
        if folder.exists() and any(folder.iterdir()):
            status = read_status(folder).get("status", "unknown")
            raise UserError(
                f"run {folder} already exists ({status}); choose another --name, or "
                "leave --name out for a fresh one"
            )
        folder.mkdir(exist_ok=True)
        return folder
    base = _default_name(dataset, model)
    for attempt in range(1, 1000):
        folder = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            folder.mkdir()  # atomic: two runs started in the same second get different folders
            return folder
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free run name under {parent}; pass --name")


def read_status(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_status(folder: Path, **fields: Any) -> None:
    status = {**read_status(folder), **fields}
    temp = folder / f".{STATUS_FILE}.tmp"
    temp.write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, folder / STATUS_FILE)
