"""Shared fixtures: tiny datasets built in temporary folders, so every test runs anywhere."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLORS = {"apple": (220, 30, 30), "grape": (120, 40, 160), "lime": (40, 200, 60)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's ~/.cache/visionfit, torchvision's weights cache (doctor
    takes its features from weights found there) and the network."""
    monkeypatch.setenv("VISIONFIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("VISIONFIT_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")


def make_image(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 16), seed: int = 0
) -> None:
    """A noisy picture around `color`: classes stay learnable, images stay distinct."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_folder_dataset(root: Path, per_class: int = 8, split: bool = False, extension: str = ".png") -> Path:
    """ROOT/<class>/*.png, or ROOT/train|val/<class>/*.png with `split`."""
    for class_index, (name, color) in enumerate(COLORS.items()):
        if split:
            for index in range(per_class):
                make_image(
                    root / "train" / name / f"{index}{extension}", color, seed=class_index * 100 + index
                )
            for index in range(per_class // 2):
                make_image(
                    root / "val" / name / f"{index}{extension}", color, seed=class_index * 100 + 50 + index
                )
        else:
            for index in range(per_class):
                make_image(root / name / f"{index}{extension}", color, seed=class_index * 100 + index)
    return root


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def visionfit_messages() -> Iterator[list[str]]:
    """The INFO messages the `visionfit` loggers send while the test runs (library calls log
    instead of printing), whoever configured logging before."""
    logger, handler = logging.getLogger("visionfit"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "fruit")


@pytest.fixture
def split_dataset(tmp_path: Path) -> Path:
    return make_folder_dataset(tmp_path / "fruit_split", split=True)


def write_cifar_batches(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder with `per_batch` images per batch file, labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "labels": [index % 10 for index in range(per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{index}.png" for index in range(per_batch)],
        }
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=2)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            },
            file,
        )
    return folder


@pytest.fixture
def cifar_batches(tmp_path: Path) -> Path:
    return write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py")


def tree_digest(root: Path) -> str:
    """A hash of every file's path, bytes and mode under `root`: equal iff nothing changed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
            digest.update(str(os.stat(path).st_mode).encode())
    return digest.hexdigest()


def read_issues(folder: Path) -> list[dict[str, str]]:
    """The rows of a doctor report's issues.csv."""
    with open(folder / "issues.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))
