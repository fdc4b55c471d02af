"""Checkpoints: safetensors weights with their JSON metadata inside, written atomically.

A checkpoint is one `.safetensors` file. Its header carries the metadata (model name and
arguments, classes, preprocessing, epoch, metrics, versions) and a SHA-256 of all of it, so the
file alone rebuilds the model and a damaged file is detected. A `.json` copy of the metadata sits
beside it for people and tools; the loader trusts only the copy inside the weights file, because a
kill between the two writes can leave the sidecar one save behind.

Nothing on the load path unpickles: safetensors cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visionfit.data.label_options import label_file_options
from visionfit.data.registry import DataSplits, load_data, saved_split_settings
from visionfit.data.transforms import Preprocess
from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.models.record import ModelRecord

FORMAT = "visionfit-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "visionfit"
SUFFIX = ".safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata, the model's weights and any training-state tensors."""

    path: Path
    metadata: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    extra_tensors: dict[str, torch.Tensor]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def test_time_flip(self) -> bool:
        """Whether training tested with flip test-time augmentation (imported checkpoints: no)."""
        return bool(self.metadata.get("config", {}).get("test_time_flip", False))

    @property
    def temperature(self) -> float:
        """The temperature `visionfit calibrate` (or training's end) fitted on validation data; 1: none."""
        return float(self.metadata.get("calibration", {}).get("temperature", 1.0))

    @property
    def test_time_shift(self) -> int:
        """The shift in pixels of training's test-time augmentation (0: none)."""
        return int(self.metadata.get("config", {}).get("test_time_shift", 0))

    @property
    def preprocess(self) -> Preprocess:
        """How a picture becomes the model's input, as training's evaluation made it."""
        return Preprocess.from_dict(self.metadata["preprocess"])

    def training_data(
        self, dataset: str | None = None, data_dir: str | None = None, *, download: bool = True
    ) -> DataSplits:
        """The data this checkpoint was trained on, split as training split it (or the data named)."""
        return training_data(self.metadata.get("config", {}), dataset, data_dir, download=download)


def training_data(
    config: Mapping[str, Any],
    dataset: str | None = None,
    data_dir: str | None = None,
    *,
    download: bool = True,
) -> DataSplits:
    """The data a run with `config` (a checkpoint's "config" metadata) trained on, or the data named
    by `dataset`/`data_dir`, with the run's held-out share and seed: a folder without train/ and val/
    sub-folders is split as training split it, so "test" is the very images training held out.
    `download=False`: only data already on this machine (else `UserError`)."""
    if dataset is None and data_dir is None:
        dataset, data_dir = config.get("dataset"), config.get("data_dir")
    return load_data(
        dataset,
        data_dir,
        shares=saved_split_settings(config),
        download=download,
        label_file=label_file_options(config) if dataset == "labels" else None,
    )


def versions() -> dict[str, str]:
    from importlib.metadata import version

    from visionfit import __version__

    return {
        "visionfit": __version__,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),  # without importing it (a second at start)
        "python": platform.python_version(),
    }


def checkpoint_metadata(
    record: ModelRecord, classes: list[str], preprocess: Preprocess, **fields: Any
) -> dict[str, Any]:
    """What a checkpoint must say so that it alone rebuilds and feeds the model: the model's
    record, the class names, the preprocessing, when and by what it was written, and `fields`
    (epoch, metrics, config, ...)."""
    return {
        "model": record.to_dict(),
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        **fields,
    }


def content_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and the metadata without its hash."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    unhashed = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(json.dumps(unhashed, sort_keys=True).encode())
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a directory; the rename still holds
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(temp_path)`, flush it to disk, then rename it over `path`.

    A crash at any instant leaves either the old file or the new one under `path`, never a torn
    one; on error the temp file is removed and the old file is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        os.chmod(temp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        write(temp_path)
        descriptor = os.open(temp_path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def previous_path(path: Path) -> Path:
    """Where the checkpoint that `path` replaced is kept: `last.safetensors` → `last.prev.safetensors`."""
    return path.with_name(f"{path.stem}.prev{SUFFIX}")


def _keep_previous(path: Path) -> None:
    """Make the current `path` also reachable as its `.prev` file, atomically and without a copy:
    a hard link shares the bytes, and the next save replaces `path` by rename, never in place."""
    previous = previous_path(path)
    link = previous.with_name(f".{previous.name}.link.tmp")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links: copy instead
        atomic_write(previous, lambda temp: shutil.copyfile(path, temp))
        return
    os.replace(link, previous)


def save_checkpoint(
    path: Path,
    model_state: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    *,
    keep_previous: bool = False,
) -> None:
    """Write `path` (.safetensors) and its `.json` sidecar atomically.

    `extra_tensors` (training state) use names containing '/', which no module parameter can have,
    so they never collide with the model's weights. With `keep_previous`, the checkpoint being
    replaced stays available as `NAME.prev.safetensors`, the fallback when the newest is damaged.
    """
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model_state.items()}
    for name, tensor in (extra_tensors or {}).items():
        if "/" not in name:
            raise ValueError(f"training-state tensor name {name!r} must contain '/'")
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    metadata["sha256"] = content_hash(tensors, metadata)
    header = {METADATA_KEY: json.dumps(metadata)}
    try:
        if keep_previous and path.is_file():
            _keep_previous(path)
        atomic_write(path, lambda temp: save_file(tensors, str(temp), metadata=header))
        sidecar = path.with_suffix(".json")
        atomic_write(sidecar, lambda temp: temp.write_text(json.dumps(metadata, indent=2) + "\n"))
    except OSError as error:
        raise UserError(
            f"cannot write checkpoint {path}: {error.strerror or error}; the previous "
            "checkpoint is kept (free disk space or fix permissions)"
        ) from None


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a .safetensors file, its .json sidecar, a run folder or its checkpoints/ folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (
            path / "checkpoints" / f"best{SUFFIX}",
            path / f"best{SUFFIX}",
            path / "checkpoints" / f"last{SUFFIX}",
            path / f"last{SUFFIX}",
        ):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path} holds no checkpoint (looked for checkpoints/best{SUFFIX} and last{SUFFIX})")
    if path.suffix == ".json" and path.with_suffix(SUFFIX).is_file():
        return path.with_suffix(SUFFIX)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # A safetensors file opens with the little-endian length of its JSON header, then "{". Those
    # eight length bytes can themselves start with 0x80 or "PK", so sniff the layout before pickles.
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def _refuse_foreign(path: Path) -> None:
    with open(path, "rb") as file:
        head = file.read(9)
    if _looks_like_safetensors(head, path.stat().st_size):
        return
    if head.startswith(b"PK") or head[:1] == b"\x80":
        raise UserError(
            f"{path} is a PyTorch pickle (torch.save), which can run code when loaded; "
            "visionfit never unpickles checkpoints; convert it with `visionfit import`"
        )


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint; tensors land on `device`."""
    path = resolve_checkpoint_path(path)
    _refuse_foreign(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as reader:
            header = reader.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable checkpoint ({error}); it may be truncated") from None
    if METADATA_KEY not in header:
        raise UserError(
            f"{path} is a safetensors file without visionfit metadata; import plain "
            "weights with `visionfit import`"
        )
    try:
        metadata = json.loads(header[METADATA_KEY])
    except ValueError:
        raise UserError(f"{path} has damaged metadata") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a visionfit checkpoint")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} was written by a newer visionfit (format "
            f"{metadata['format_version']}); upgrade visionfit to read it"
        )
    if content_hash(tensors, metadata) != metadata.get("sha256"):
        raise UserError(f"{path} is damaged: its contents do not match the hash stored in it")
    model_state = {name: tensor for name, tensor in tensors.items() if "/" not in name}
    extra = {name: tensor for name, tensor in tensors.items() if "/" in name}
    return Checkpoint(path, metadata, model_state, extra)


def load_checkpoint_or_previous(path: Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load `path`; if it is damaged, warn and load the checkpoint it replaced (`.prev`)."""
    try:
        return load_checkpoint(path, device=device)
    except UserError as error:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        from visionfit.console import logger

        logger.warning(f"warning: {error}; falling back to the previous checkpoint {previous}")
        return load_checkpoint(previous, device=device)
