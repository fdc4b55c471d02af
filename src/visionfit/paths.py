"""Where visionfit keeps what it downloads or computes once: its cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """visionfit's cache: $VISIONFIT_CACHE, else $XDG_CACHE_HOME/visionfit, else ~/.cache/visionfit."""
    if os.environ.get("VISIONFIT_CACHE"):
        return Path(os.environ["VISIONFIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "visionfit"
