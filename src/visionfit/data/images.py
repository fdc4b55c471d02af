"""Opening any image file as the 3-channel RGB picture a camera or phone meant it to be.

Training, evaluation and prediction all decode through `open_rgb`, so a photo is turned the same
way (EXIF orientation) and every mode (RGBA, P, LA, L, I;16, CMYK, ...) becomes RGB the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from visionfit.errors import UserError

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to RGB.

    Transparent pixels are composited onto white: their colour values are undefined, and icons
    and cut-outs are drawn to be seen on a light page. 16-bit and float images are scaled to
    8 bits rather than clipped (PIL's own convert would turn most of a 16-bit image white).
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        scale = 1.0 / 257.0 if image.mode != "F" else (255.0 if values.max(initial=0) <= 1 else 1.0)
        gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(source: str | Path | BinaryIO) -> Image.Image:
    """Decode an image file fully, apply its EXIF orientation and return it as RGB.

    Raises `UserError` naming the file when it is not a readable image.
    """
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<stream>")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is an error here: a huge image is refused, not decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                oriented = ImageOps.exif_transpose(image)
                return to_rgb(oriented if oriented is not None else image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"{name}: refused, too many pixels to decode safely ({error})") from None
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error) or type(error).__name__
        raise UserError(f"{name}: not a readable image ({reason})") from None
