"""A fast check of every image file before training starts, so a broken file is reported up front
(or skipped) instead of stopping a run an hour in.

Files that passed are remembered by path, size and modification time (as the decoded cache keys
them), so the next run over the same data checks only what is new or changed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from visionfit.data.registry import DataSplits
from visionfit.errors import UserError
from visionfit.paths import cache_dir

# JPEG can decode at 1/8 scale straight from its DCT coefficients: every byte of the entropy-coded
# data is still read (truncation is caught) at a fraction of the cost of a full decode.
_DRAFT_SIDE = 64


def check_image(path: Path) -> str | None:
    """None if `path` decodes as an image, otherwise the reason it does not.

    Header and checksums first (`verify`, which catches a PNG with a wrong CRC), then a real
    decode (which catches truncation). Decompression bombs are refused from the header alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too many pixels to decode safely (decompression bomb)"
    except Exception as error:  # Pillow raises many types for malformed files; all mean "bad"
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def find_bad_images(paths: list[Path], workers: int | None = None) -> list[tuple[Path, str]]:
    """Check `paths` in parallel threads (Pillow decodes without holding the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return [(path, reason) for path, reason in zip(paths, reasons, strict=True) if reason is not None]


def _identity(path: Path) -> str:
    status = os.stat(path)
    return f"{os.path.abspath(path)}\t{status.st_size}\t{status.st_mtime_ns}"


def _record(paths: list[Path]) -> Path:
    """Where the good files under the folder that holds `paths` are remembered."""
    root = os.path.commonpath([os.path.abspath(path) for path in paths])
    return cache_dir() / "checked" / f"{hashlib.sha256(root.encode()).hexdigest()[:32]}.txt"


def find_bad_images_once(paths: list[Path]) -> list[tuple[Path, str]]:
    """`find_bad_images`, skipping the files a previous check found good and that have not changed
    since (same path, size and modification time); then remembers the good ones."""
    record = _record(paths)
    try:
        known = set(record.read_text(encoding="utf-8").splitlines())
    except OSError:
        known = set()
    identities = [_identity(path) for path in paths]
    unknown = [path for path, identity in zip(paths, identities, strict=True) if identity not in known]
    bad = find_bad_images(unknown) if unknown else []
    if unknown:
        failed = {path for path, _ in bad}
        good = [identity for path, identity in zip(paths, identities, strict=True) if path not in failed]
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            temporary = record.with_name(f".{record.name}.{os.getpid()}.tmp")
            temporary.write_text("\n".join(good) + "\n", encoding="utf-8")
            os.replace(temporary, record)
        except OSError:  # a read-only cache costs only the next run's check
            pass
    return bad


def screen_images(
    data: DataSplits,
    policy: str,
    notify: Callable[[str], None],
    *,
    check: Callable[[list[Path]], list[tuple[Path, str]]] = find_bad_images_once,
) -> tuple[DataSplits, list[tuple[Path, str]]]:
    """Decode-check every image file of the dataset before training (`check`: the unreadable
    files and why; a multi-process run passes one that decodes in one process and tells the
    others): stop with the list of unreadable files (`policy` "error"), or leave them out ("skip")
    and return them for the run folder's skipped_images.txt."""
    files = data.train.files() + data.test.files() + (data.val.files() if data.val is not None else [])
    if not files:
        return data, []
    bad = check(files)
    if not bad:
        return data, []
    if policy == "error":
        shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(
            f"{len(bad)} unreadable image file(s): {shown}{more}; "
            "fix or remove them, or pass --bad-images skip to leave them out"
        )
    notify(f"warning: leaving out {len(bad)} unreadable image file(s) (--bad-images skip)")
    return data.without({path for path, _ in bad}), bad
