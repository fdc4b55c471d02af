"""What the tests of `visionfit serve` share: a tiny checkpoint, image bytes, and a live server
started the way a user starts it (`python -m visionfit serve ...`) on a free port."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.models import ModelRecord, create_model

SOURCE = str(Path(__file__).resolve().parents[1] / "src")
CLASSES = ["apple", "grape", "lime"]
PREPROCESS = Preprocess(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A cifar10-quick checkpoint for three classes with random weights (answers need no training)."""
    torch.manual_seed(seed)
    model = create_model("cifar10-quick", len(CLASSES))
    metadata = checkpoint_metadata(
        ModelRecord("cifar10-quick", len(CLASSES)), CLASSES, PREPROCESS, metrics={"test_accuracy": 0.5}
    )
    save_checkpoint(path, model.state_dict(), metadata)
    return path


def image_bytes(format: str = "PNG", size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, *arguments: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`visionfit serve MODEL ARGUMENTS` in a process of its own; returns it and its base URL once
    /health answers."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "visionfit", "serve", str(model), "--port", str(port), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"visionfit serve exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"visionfit serve did not answer within {timeout} s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


TINY_MODEL = """
from torch import nn


class Tiny(nn.Module):
    input_size = 32

    def __init__(self, num_classes=3):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    def forward(self, x):
        return self.layers(x)
"""


def custom_checkpoint(folder: Path) -> Path:
    """A checkpoint of a user's own model class, which loading it would run (`tiny.py:Tiny`)."""
    import visionfit

    model_file = folder / "tiny.py"
    model_file.write_text(TINY_MODEL)
    model = visionfit.create_model(f"{model_file}:Tiny", len(CLASSES))
    return visionfit.save_model(model, folder / "custom.safetensors", classes=CLASSES, preprocess=PREPROCESS)
