"""What the service accepts, and the checks that refuse the rest before it costs memory or time.

An upload is judged by its bytes alone: Pillow identifies it among the formats `predict` reads from
a folder (JPEG, PNG, BMP, WebP, GIF, TIFF, PPM/PGM) — never by its file name or Content-Type, and
no other Pillow plugin is ever asked (some, like EPS, would run external programs). Its size is
read from the header and a picture with more pixels than `predict` would decode is refused before
a single pixel is decoded. Only then is it decoded, exactly as `predict` decodes a file.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import torch
from PIL import Image

from visionfit.data.folder import IMAGE_EXTENSIONS
from visionfit.data.transforms import Preprocess
from visionfit.errors import UserError
from visionfit.prediction import picture_pixels

MEGABYTE = 1024 * 1024
# What Pillow raises for a file it cannot identify or decode (a damaged file, not a bug of ours).
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _readable_formats() -> tuple[str, ...]:
    # The Pillow formats behind the extensions `predict` takes from folders, so that the service
    # reads exactly what the command reads.
    extensions = Image.registered_extensions()
    return tuple(sorted({extensions[extension] for extension in IMAGE_EXTENSIONS if extension in extensions}))


FORMATS = _readable_formats()


@dataclass(frozen=True)
class ServeLimits:
    """The service's limits: each bounds memory or work per request or in total."""

    max_body_bytes: int = 16 * MEGABYTE  # a request body over this is refused (413) as it arrives
    max_files: int = 32  # images in one request
    max_batch: int = 64  # images in one model batch
    max_wait_ms: float = 3.0  # how long a first image waits for others to share its batch
    max_queue: int = 64  # requests being received, decoded or classified at once; more get 503
    decode_threads: int = max(1, min(4, os.cpu_count() or 1))  # images decoded at once

    def describe(self) -> dict[str, float]:
        return {
            "max_body_mb": self.max_body_bytes / MEGABYTE,
            "max_files": self.max_files,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "max_queue": self.max_queue,
        }


class Refused(Exception):
    """An upload or request the service will not classify: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.file = file

    def record(self) -> dict[str, str]:
        return {"error": self.message} if self.file is None else {"error": self.message, "file": self.file}


def identify(data: bytes, name: str) -> Image.Image:
    """Open `data` as an image of a format predict reads, without decoding its pixels.

    415 when it is none of them; 413 when its header announces more pixels than predict decodes
    (Pillow's decompression-bomb limit), so a small file that would inflate to gigabytes never does.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(413, f"{name}: refused, too many pixels to decode safely", name) from None
    except _PILLOW_ERRORS:
        readable = ", ".join(FORMATS)
        raise Refused(415, f"{name}: not an image in a format visionfit reads ({readable})", name) from None
    # Checked here rather than by turning Pillow's warning into an error: warning filters are
    # process-wide and uploads are identified on several threads at once.
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise Refused(
            413, f"{name}: refused, too many pixels to decode safely ({width}x{height}, over {limit:,})", name
        )
    return image


def decode_upload(data: bytes, name: str, preprocess: Preprocess) -> torch.Tensor:
    """One uploaded file as the model's pixels, by `picture_pixels` as predict reads a file:
    413/415 from `identify`, 422 when the image is damaged or cut short."""
    image = identify(data, name)
    try:
        return picture_pixels(image, preprocess)
    except (*_PILLOW_ERRORS, UserError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Refused(422, f"{name}: not a readable image ({reason})", name) from None
    finally:
        image.close()
