"""One folder per run: DIR/NAME/ with config.yaml, run.json (status), events, metrics and
checkpoints. A finished run is never overwritten."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from visionfit.config import TrainConfig, read_config_file, save_config, saved_config
from visionfit.data.exclusion import exclusion_record
from visionfit.data.registry import DataSplits
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
        # A run killed before it wrote anything leaves only its lock file (engine.run_lock): free.
        if folder.exists() and any(path.name != ".lock" for path in folder.iterdir()):
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


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def start_run_folder(
    config: TrainConfig,
    folder: Path,
    data: DataSplits,
    processes: int,
    skipped: list[tuple[Path, str]],
    *,
    resumed: bool,
) -> None:
    """config.yaml, the list of left-out images, and run.json saying the run is running; with
    --exclude, both record the CSV and how many pictures it left out."""
    excluded = exclusion_record(config.exclude, skipped)
    notes = ()
    if excluded is not None:
        kinds = ", ".join(f"{count} {kind}" for kind, count in excluded["kinds"].items()) or "none present"
        notes = (
            f"--exclude {excluded['file']} left out {excluded['count']} pictures ({kinds}); "
            "skipped_images.txt lists them",
        )
    save_config(config, folder / "config.yaml", notes)
    if skipped:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
        (folder / "skipped_images.txt").write_text(lines, encoding="utf-8")
    write_status(
        folder,
        status="running",
        **({"resumed": now()} if resumed else {"started": now()}),
        classes=data.classes,
        dataset=data.description,
        processes=processes,
        **({"excluded": excluded} if excluded is not None else {}),
    )


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


# Options a resumed run may change: they decide where and how fast it runs and what it prints,
# not what it computes.
RESUMABLE_CHANGES = (
    "device",
    "workers",
    "log_every",
    "test_every",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
    "tensorboard",
    "on_nan",
    "clip_grad_norm",
    "dist_timeout",
)
_NOT_COMPARED = (*RESUMABLE_CHANGES, "name", "run_dir")


def load_run_config(folder: Path) -> TrainConfig:
    """The config a run was started with (its config.yaml), as saved: it was checked when the run
    started, and the config a resumed run trains with is checked once, with its changes."""
    if not folder.is_dir():
        raise UserError(f"--resume {folder}: no such run folder")
    path = folder / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {folder}: not a visionfit run folder (no config.yaml)")
    return saved_config(read_config_file(path), str(path))


def differing_options(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """Options that differ in ways a resumed run cannot honour; an unset dataset (and task: a run
    saves the one its data resolved to) matches any."""
    saved_values, requested_values = saved.to_dict(), requested.to_dict()
    if requested.dataset is None:
        requested_values["dataset"] = saved_values["dataset"]
    if requested.task == "auto":
        requested_values["task"] = saved_values["task"]
    return [
        key for key in saved_values if key not in _NOT_COMPARED and saved_values[key] != requested_values[key]
    ]


def check_resume_changes(folder: Path, saved: TrainConfig, requested: TrainConfig) -> None:
    differences = differing_options(saved, requested)
    if differences:
        shown = ", ".join(
            f"--{key.replace('_', '-')} ({getattr(saved, key)!r} in the run)" for key in differences
        )
        raise UserError(
            f"cannot resume {folder} with different settings: {shown}; a resumed run keeps its config "
            f"(only {', '.join('--' + key.replace('_', '-') for key in RESUMABLE_CHANGES)} may change)"
        )


def find_resumable_run(run_dir: str | Path, config: TrainConfig) -> Path | None:
    """The newest unfinished run under `run_dir` started with the same config, if any."""
    parent = Path(run_dir).expanduser()
    if not parent.is_dir():
        return None
    candidates = []
    for folder in parent.iterdir():
        status = read_status(folder)
        if not status or status.get("status") == "finished" or not (folder / "config.yaml").is_file():
            continue
        try:
            saved = load_run_config(folder)
        except UserError:
            continue
        if not differing_options(saved, config):
            candidates.append((status.get("started", ""), folder.stat().st_mtime, folder))
    return max(candidates)[2] if candidates else None


def read_history(folder: Path, completed_epochs: int) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl up to `completed_epochs`, dropping later lines (written
    after the checkpoint being resumed, so they will be written again)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a kill mid-write
            continue
        if record.get("epoch", 0) <= completed_epochs:
            records.append(record)
    temp = folder / ".metrics.jsonl.tmp"
    temp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    os.replace(temp, path)
    return records
