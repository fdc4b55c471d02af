"""Using a trained model: `visionfit.load(checkpoint)` → a `Predictor` that turns images into
readable (class name, probability) lists, with the preprocessing of the checkpoint and nothing else.

Prediction repeats training's evaluation transform exactly, but split in two: the per-image part
(decode to RGB, resize as uint8) runs on a pool of threads, and the float conversion and
normalisation run once per batch, which for small images is most of the per-image cost.
"""

from __future__ import annotations

import glob
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision.transforms.v2 import functional as F

from visionfit.data.images import is_image_name, open_rgb, to_rgb
from visionfit.data.transforms import EvalTransform, Preprocess
from visionfit.engine.checkpoint import load_checkpoint
from visionfit.engine.loops import classify
from visionfit.errors import UserError
from visionfit.runtime import Runtime, create_runtime
from visionfit.serialization import build_model

ImageInput = str | Path | Image.Image | torch.Tensor | BinaryIO
STDIN = "-"


@dataclass
class Prediction:
    """One input's result: its name and its top classes, or why it could not be read."""

    source: str
    top: list[tuple[str, float]]
    error: str | None = None


class Predictor:
    """A model with its class names and input transform, ready for `predict`."""

    def __init__(
        self,
        model: nn.Module,
        classes: list[str],
        preprocess: Preprocess,
        device: torch.device,
        *,
        checkpoint_path: Path | None = None,
        flip: bool = False,
        shift: int = 0,
        precision: str = "fp32",
    ) -> None:
        # channels-last runs the convolutions of small images about twice as fast on CPU (oneDNN)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.classes = list(classes)
        self.preprocess = preprocess
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.flip = flip  # test-time flip and shift, as the checkpoint's training tested
        self.shift = shift
        self.runtime = Runtime(device=device, precision=precision)
        self.transform = EvalTransform(preprocess)

    def to_uint8(self, picture: ImageInput) -> torch.Tensor:
        """Decode (paths, streams) or take (PIL images, tensors) one picture; resize it. A uint8
        tensor stays uint8; a float tensor is taken as already scaled to [0, 1]."""
        if isinstance(picture, torch.Tensor):
            if picture.ndim != 3 or picture.shape[0] not in (1, 3):
                raise UserError(f"expected an image tensor of shape (3, H, W), got {tuple(picture.shape)}")
            tensor = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture
        else:
            if isinstance(picture, Image.Image):  # oriented and converted as open_rgb would
                image = to_rgb(ImageOps.exif_transpose(picture) or picture)
            else:
                image = open_rgb(picture)
            tensor = F.to_image(image).as_subclass(torch.Tensor)
        return self.transform.resize(tensor)

    def batch_tensor(self, resized: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack resized pictures and convert and normalise them as one batch."""
        if all(tensor.dtype == torch.uint8 for tensor in resized):
            return self.transform.to_float(torch.stack(list(resized)))
        return torch.stack([self.transform.to_float(tensor) for tensor in resized])

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, num_classes) for a normalised batch."""
        batch = batch.to(self.device, non_blocking=self.device.type == "cuda")
        batch = batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
        with self.runtime.autocast():
            logits = classify(self.model, batch, flip=self.flip, shift=self.shift)
        return torch.softmax(logits.float(), dim=1).cpu()

    def top_k(self, probabilities: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        values, indices = probabilities.topk(min(k, len(self.classes)), dim=1)
        return [
            [
                (self.classes[index], float(value))
                for value, index in zip(row_values, row_indices, strict=True)
            ]
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 1, batch_size: int = 256
    ) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) lists, one per image, most probable first.

        `images`: paths, PIL images, (3, H, W) tensors (uint8, or float in [0, 1]), or a list of
        them. An unreadable file raises `UserError`; `predict_sources` reports it per row instead.
        """
        single = isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.ndim == 3
        )
        items = [images] if single else list(images)  # a 4-D tensor iterates as its images
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(items), batch_size):
            resized = [self.to_uint8(item) for item in items[start : start + batch_size]]
            results.extend(self.top_k(self.probabilities(self.batch_tensor(resized)), top_k))
        return results

    def predict_sources(
        self, sources: Sequence[str], *, top_k: int = 1, batch_size: int = 256, threads: int | None = None
    ) -> Iterator[Prediction]:
        """Predict files (or `-` for stdin) in order; unreadable files become error rows."""
        threads = threads or min(8, os.cpu_count() or 1)

        def read(source: str) -> torch.Tensor | str:
            try:
                return self.to_uint8(sys.stdin.buffer if source == STDIN else source)
            except UserError as error:  # the row names the file already
                return str(error).removeprefix(f"{source}: ")

        chunks = [sources[start : start + batch_size] for start in range(0, len(sources), batch_size)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            # The next batch decodes on the threads while the model runs on this one (torch releases
            # the GIL inside its kernels); at most two batches are held at a time.
            queued = deque([[pool.submit(read, source) for source in chunk] for chunk in chunks[:2]])
            for number, chunk in enumerate(chunks):
                decoded = [future.result() for future in queued.popleft()]
                if number + 2 < len(chunks):
                    queued.append([pool.submit(read, source) for source in chunks[number + 2]])
                good = [index for index, item in enumerate(decoded) if isinstance(item, torch.Tensor)]
                tops: dict[int, list[tuple[str, float]]] = {}
                if good:
                    batch = self.batch_tensor([decoded[index] for index in good])  # type: ignore[misc]
                    tops = dict(zip(good, self.top_k(self.probabilities(batch), top_k), strict=True))
                for index, source in enumerate(chunk):
                    item = decoded[index]
                    if isinstance(item, str):
                        yield Prediction(source, [], item)
                    else:
                        yield Prediction(source, tops[index])


def load(
    checkpoint: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    flip: bool | None = None,
    shift: int | None = None,
) -> Predictor:
    """Load a visionfit checkpoint (file or run folder) as a `Predictor`.

    `precision="auto"` chooses as training does (bf16 autocast on CPUs with AVX512-BF16 or AMX and on
    GPUs that have it); `"fp32"` gives the exact float32 outputs. `flip` (test-time flip: average
    each image's prediction with its mirror image's) and `shift` (also with copies moved that many
    pixels; 0: off) default to what the checkpoint's training did.

    >>> predictor = visionfit.load("runs/my-run")
    >>> predictor.predict(["cat.jpg"], top_k=3)
    [[('cat', 0.81), ('dog', 0.12), ('deer', 0.03)]]
    """
    loaded = load_checkpoint(checkpoint, device="cpu")
    model = build_model(loaded)
    preprocess = Preprocess.from_dict(loaded.metadata["preprocess"])
    runtime = create_runtime(device, precision)
    return Predictor(
        model,
        loaded.classes,
        preprocess,
        runtime.device,
        checkpoint_path=loaded.path,
        flip=loaded.test_time_flip if flip is None else flip,
        shift=loaded.test_time_shift if shift is None else shift,
        precision=runtime.precision,
    )


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (recursively, image files only, sorted), globs and `-` (stdin), in order."""
    sources: list[str] = []
    for text in inputs:
        if text == STDIN:
            sources.append(STDIN)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            found = [
                str(Path(folder) / name)
                for folder, subfolders, names in os.walk(path)
                for name in names
                if is_image_name(name)
                and not any(part.startswith(".") for part in Path(folder).relative_to(path).parts)
            ]
            if not found:
                raise UserError(f"{text}: folder has no image files")
            sources.extend(sorted(found))
        elif path.exists():
            sources.append(str(path))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise UserError(f"{text}: no file matches")
            sources.extend(expand_inputs(matches))
        else:
            sources.append(str(path))  # reported on its own row as missing
    return sources


def prediction_record(prediction: Prediction) -> dict[str, Any]:
    """The JSON object of one prediction (the --json line)."""
    if prediction.error is not None:
        return {"file": prediction.source, "error": prediction.error}
    label, probability = prediction.top[0]
    return {
        "file": prediction.source,
        "class": label,
        "probability": probability,
        "top": [{"class": name, "probability": value} for name, value in prediction.top],
    }
