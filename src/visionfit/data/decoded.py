"""Image files decoded once into one uint8 tensor, cached on disk for the next run.

The cache key covers every file's absolute path, size and modification time, its label and the
preprocessing's size and resize rule, so any added, removed, changed or touched file gives another
key and a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from visionfit.data.images import open_rgb
from visionfit.data.transforms import Preprocess, resize_picture
from visionfit.paths import cache_dir

# One-line messages go through logging: quiet in a library call, printed by the CLI.
logger = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the cached tensors change meaning


def cache_key(paths: list[Path], labels: list[int], preprocess: Preprocess) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "size": preprocess.input_size,
        "resize_mode": preprocess.resize_mode,
        "crop_fraction": preprocess.crop_fraction,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path, label in zip(paths, labels, strict=True):
        status = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()[:32]


def decode_files(paths: list[Path], preprocess: Preprocess) -> torch.Tensor:
    """Decode every file (EXIF-oriented RGB, as training reads it) and resize it to the input size."""
    size = preprocess.input_size
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for index, path in enumerate(paths):
        picture = torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)
        images[index] = resize_picture(picture, preprocess)
    return images


def decoded_images(
    paths: list[Path], labels: list[int], preprocess: Preprocess, notify: Callable[[str], None] = logger.info
) -> torch.Tensor:
    """The files as one uint8 (N, 3, S, S) tensor, from the cache when it holds them."""
    folder = cache_dir() / "decoded"
    path = folder / f"{cache_key(paths, labels, preprocess)}.safetensors"
    if path.is_file():
        try:
            images = load_file(str(path))["images"]
            if images.shape == (len(paths), 3, preprocess.input_size, preprocess.input_size):
                return images
        except Exception:  # a torn or foreign file: decode again and replace it
            pass
    notify(f"decoding {len(paths)} images into memory once (cached in {folder})")
    images = decode_files(paths, preprocess)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"images": images.contiguous()}, str(temporary))
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache costs only the next run's decoding time
        notify(f"warning: cannot cache the decoded images in {folder} ({error.strerror})")
    return images
