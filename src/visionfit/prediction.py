"""Using a trained model: `visionfit.load(checkpoint)` → a `Predictor` that turns images into
readable (class name, probability) lists, with the preprocessing of the checkpoint and nothing else.

Every picture goes through `picture_pixels` — decoded to RGB with its EXIF orientation, resized to
the input size exactly as training's evaluation resized it — on a pool of threads; the normalisation,
the model and the test-time augmentation run once per batch inside the `InferenceModel`.
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

from visionfit.data.folder import is_image_name
from visionfit.data.images import open_rgb, to_rgb
from visionfit.data.transforms import Preprocess, as_uint8_tensor, resize_picture
from visionfit.errors import UserError
from visionfit.inference import InferenceModel, InferenceOptions, load_for_inference
from visionfit.inference.options import inference_options

ImageInput = str | Path | Image.Image | torch.Tensor | BinaryIO
STDIN = "-"


@dataclass
class Prediction:
    """One input's result: its name and its top classes, or why it could not be read."""

    source: str
    top: list[tuple[str, float]]
    error: str | None = None
    multilabel: bool = False  # `top` is the set of labels at or above their thresholds (maybe empty)


def picture_pixels(picture: ImageInput, preprocess: Preprocess) -> torch.Tensor:
    """One picture as the model's pixels at its input size: a (3, S, S) uint8 tensor, or float on
    the same 0–255 scale for a float tensor given in [0, 1].

    Paths and binary streams are decoded (EXIF-oriented RGB, as training reads files); PIL images
    are oriented and converted the same way; tensors of shape (3, H, W) or (1, H, W) are taken as
    they are. This is the one preprocessing of every prediction: the service, the CLI and the
    Python API, with a checkpoint or an exported model, all call it.
    """
    if isinstance(picture, torch.Tensor):
        if picture.ndim != 3 or picture.shape[0] not in (1, 3):
            raise UserError(f"expected an image tensor of shape (3, H, W), got {tuple(picture.shape)}")
        tensor = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture
        if tensor.is_floating_point():
            tensor = tensor.float() * 255
    elif isinstance(picture, Image.Image):
        tensor = as_uint8_tensor(to_rgb(ImageOps.exif_transpose(picture) or picture))
    else:
        tensor = as_uint8_tensor(open_rgb(picture))
    return resize_picture(tensor, preprocess)


def stack_pixels(pictures: Sequence[torch.Tensor]) -> torch.Tensor:
    """One batch of `picture_pixels` results (float when any is)."""
    if all(picture.dtype == torch.uint8 for picture in pictures):
        return torch.stack(list(pictures))
    return torch.stack([picture.float() for picture in pictures])


def _is_single(images: Any) -> bool:
    # A binary stream is one image (iterating it would yield its lines); a 4-D tensor is a batch.
    return (
        isinstance(images, (str, Path, Image.Image))
        or hasattr(images, "read")
        or (isinstance(images, torch.Tensor) and images.ndim == 3)
    )


class Predictor:
    """Images in, (class name, probability) lists out, for one `InferenceModel`."""

    def __init__(self, model: InferenceModel, *, batch_size: int = 256) -> None:
        self.model = model
        self.batch_size = batch_size  # images per forward pass unless a call says otherwise

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    @property
    def preprocess(self) -> Preprocess:
        return self.model.preprocess

    def top_k(self, probabilities: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        values, indices = probabilities.topk(min(k, len(self.classes)), dim=1)
        return [
            [
                (self.classes[index], float(value))
                for value, index in zip(row_values, row_indices, strict=True)
            ]
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def label_sets(self, probabilities: torch.Tensor) -> list[list[tuple[str, float]]]:
        """Multi-label: each image's classes at or above their thresholds, most probable first."""
        chosen = probabilities >= torch.tensor(self.model.thresholds, dtype=probabilities.dtype)
        return [
            sorted(
                ((self.classes[index], float(row[index])) for index in picked.nonzero().flatten().tolist()),
                key=lambda pair: -pair[1],
            )
            for row, picked in zip(probabilities, chosen, strict=True)
        ]

    def answers(self, probabilities: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """The top-k classes, or for a multi-label model the set of labels."""
        return self.label_sets(probabilities) if self.model.multilabel else self.top_k(probabilities, k)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 1, batch_size: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) lists, one per image, most probable first; for a
        multi-label model, each image's set of labels (those at or above their thresholds).

        `images`: a path, binary stream, PIL image or (3, H, W) tensor (uint8, or float in [0, 1]),
        or a list of them. An unreadable file raises `UserError`; `predict_sources` reports it per
        row instead.
        """
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        batch_size = batch_size or self.batch_size
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(items), batch_size):
            pixels = [picture_pixels(item, self.preprocess) for item in items[start : start + batch_size]]
            results.extend(self.answers(self.model.probabilities(stack_pixels(pixels)), top_k))
        return results

    def predict_sources(
        self,
        sources: Sequence[str],
        *,
        top_k: int = 1,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> Iterator[Prediction]:
        """Predict files (or `-` for stdin) in order; unreadable files become error rows."""
        threads = threads or min(8, os.cpu_count() or 1)
        batch_size = batch_size or self.batch_size

        def read(source: str) -> torch.Tensor | str:
            try:
                return picture_pixels(sys.stdin.buffer if source == STDIN else source, self.preprocess)
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
                yield from self._rows(chunk, decoded, top_k)

    def _rows(
        self, chunk: Sequence[str], decoded: list[torch.Tensor | str], top_k: int
    ) -> Iterator[Prediction]:
        good = [index for index, item in enumerate(decoded) if isinstance(item, torch.Tensor)]
        tops: dict[int, list[tuple[str, float]]] = {}
        if good:
            batch = stack_pixels([decoded[index] for index in good])  # type: ignore[misc]
            tops = dict(zip(good, self.answers(self.model.probabilities(batch), top_k), strict=True))
        for index, source in enumerate(chunk):
            item = decoded[index]
            if isinstance(item, str):
                yield Prediction(source, [], item)
            else:
                yield Prediction(source, tops[index], multilabel=self.model.multilabel)


def load(checkpoint: str | Path, options: InferenceOptions | None = None, **settings: Any) -> Predictor:
    """Load a visionfit checkpoint (file or run folder) or an exported `.onnx` file as a `Predictor`,
    run as `options` say (`InferenceOptions`); keyword `settings` replace single options.

    `precision="auto"` chooses as training does (bf16 autocast on CPUs with AVX512-BF16 or AMX and on
    GPUs that have it); `"fp32"` gives the exact float32 outputs. `flip` (test-time flip: average
    each image's prediction with its mirror image's) and `shift` (also with copies moved that many
    pixels; 0: off) default to what the checkpoint's training did. `model_code`: what may run of a
    checkpoint's own model file ("refuse", "recorded", "trust"; see `InferenceOptions`). An ONNX
    file runs on onnxruntime with the same preprocessing; `classes` and `input_size` name them for
    an ONNX classifier without visionfit metadata.

    >>> predictor = visionfit.load("runs/my-run")
    >>> predictor.predict(["cat.jpg"], top_k=3)
    [[('cat', 0.81), ('dog', 0.12), ('deer', 0.03)]]
    """
    options = inference_options(options, settings)
    return Predictor(load_for_inference(checkpoint, options), batch_size=options.batch_size)


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
    if prediction.multilabel:
        return {
            "file": prediction.source,
            "labels": [{"class": name, "probability": value} for name, value in prediction.top],
        }
    label, probability = prediction.top[0]
    return {
        "file": prediction.source,
        "class": label,
        "probability": probability,
        "top": [{"class": name, "probability": value} for name, value in prediction.top],
    }
