"""One streamed pass over every picture: what the checks that need no model read.

Each picture is read once, in worker threads (Pillow and numpy decode and compute without the
GIL), and reduced at once to a few numbers — file size, content hash, format, size, frames, the
image properties cleanvision scores, a perceptual hash — so memory stays bounded: no picture is
kept. JPEGs decode at reduced scale from their DCT coefficients (every byte is still read, so a
truncated file still fails).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageFilter

from visionfit.doctor.collection import Collection

# Properties are scored on a copy at most this many pixels on its longer side: enough for
# brightness, entropy and edges, and the cost of a picture no longer depends on its size.
PROPERTY_SIDE = 128
THUMBNAIL_SIDE = 16
# The formats Pillow names for each file extension (a mismatch is an odd file, not a broken one).
EXTENSION_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".gif": "GIF",
    ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM",
}  # fmt: skip


@dataclass
class PictureFacts:
    """What one pass over one picture found out. Brightness values are 0–1."""

    size_bytes: int = -1  # -1: held in memory
    digest: str = ""  # sha256 of the file's bytes (of the pixels for pictures in memory)
    error: str = ""  # why the file could not be read; "" when it could
    format: str = ""
    width: int = 0
    height: int = 0
    frames: int = 1
    dark: float = 1.0  # 99th percentile of perceived brightness (low: a dark picture)
    light: float = 0.0  # 5th percentile of perceived brightness (high: a washed-out picture)
    sharpness: float = 1.0  # spread of the edge filter's response (low: blurry)
    entropy: float = 8.0  # bits per pixel of the grey-level histogram (low: little information)
    spread: float = 1.0  # standard deviation of the pixel values (near 0: a near-constant picture)
    phash: int = 0  # 64-bit perceptual hash (imagehash.phash) of the picture
    thumbnail: bytes = b""  # THUMBNAIL_SIDE² grey levels: a second look at near-copy candidates


@dataclass
class Facts:
    """`PictureFacts` of every item of a collection, one numpy column per field."""

    columns: dict[str, np.ndarray]

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(self.columns["digest"])


def gather_facts(
    collection: Collection, workers: int | None = None, progress: Callable[[int], None] | None = None
) -> Facts:
    """Read every picture of `collection` once (in `workers` threads) and keep only its facts."""
    import imagehash  # noqa: F401  (fail here, once, when the extra is missing: see checks.require)

    workers = workers or min(4, os.cpu_count() or 1)
    rows: list[PictureFacts] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(lambda item: examine(collection, item), range(len(collection)), chunksize=32):
            rows.append(row)
            if progress is not None and len(rows) % 1000 == 0:
                progress(len(rows))
    columns = {
        field.name: np.array([getattr(row, field.name) for row in rows], dtype=_dtype(field.name))
        for field in fields(PictureFacts)
    }
    return Facts(columns)


def _dtype(name: str) -> object:
    if name == "phash":
        return np.uint64
    if name in ("digest", "error", "format", "thumbnail"):
        return object
    return np.int64 if name in ("size_bytes", "width", "height", "frames") else np.float64


def examine(collection: Collection, item: int) -> PictureFacts:
    """The facts of one item: of its file when it has one, else of its pixels in memory."""
    path = collection.paths[item]
    if path is None:
        picture = collection.picture(item)
        facts = PictureFacts(format="memory", width=picture.width, height=picture.height)
        facts.digest = hashlib.sha256(picture.tobytes()).hexdigest()
        return describe(picture, facts)
    try:
        content = path.read_bytes()
    except OSError as error:
        return PictureFacts(size_bytes=0, error=f"cannot read the file ({error.strerror})")
    facts = PictureFacts(size_bytes=len(content), digest=hashlib.sha256(content).hexdigest())
    if not content:
        facts.error = "zero-size file"
        return facts
    try:
        picture = decode(content, facts)
    except Exception as error:  # Pillow raises many types for malformed files; all mean "broken"
        facts.error = (str(error).splitlines()[0] if str(error) else type(error).__name__)[:200]
        return facts
    return describe(picture, facts)


def decode(content: bytes, facts: PictureFacts) -> Image.Image:
    """Decode `content` at reduced scale as RGB, filling its format, full size and frame count."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(content)) as image:
            facts.format = image.format or ""
            facts.width, facts.height = image.size
            facts.frames = int(getattr(image, "n_frames", 1))
            if image.format == "JPEG":
                image.draft("RGB", (PROPERTY_SIDE, PROPERTY_SIDE))
            image.load()
            picture = image.convert("RGB")
    picture.thumbnail((PROPERTY_SIDE, PROPERTY_SIDE))
    return picture


def describe(picture: Image.Image, facts: PictureFacts) -> PictureFacts:
    """Fill the image properties (as cleanvision defines them) and the perceptual hash."""
    import imagehash

    pixels = np.asarray(picture, dtype=np.float32) / 255.0
    # Perceived brightness (the HSP colour model cleanvision uses), per pixel.
    brightness = np.sqrt(pixels @ np.array([0.241, 0.691, 0.068], dtype=np.float32))
    facts.dark = float(np.percentile(brightness, 99))
    facts.light = float(np.percentile(brightness, 5))
    grey = picture.convert("L")
    histogram = np.bincount(np.asarray(grey).ravel(), minlength=256).astype(np.float64)
    share = histogram[histogram > 0] / histogram.sum()
    facts.entropy = float(-(share * np.log2(share)).sum())
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), dtype=np.float32)[1:-1, 1:-1] / 255.0
    facts.sharpness = float(edges.std()) if edges.size else 0.0
    facts.spread = float(pixels.std())
    bits = imagehash.phash(picture).hash.ravel()
    facts.phash = int(np.packbits(bits).view(">u8")[0])
    facts.thumbnail = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR).tobytes()
    return facts
