"""Defaults that follow the data. With no model and no recipe named, the pictures under --data-dir
(or beside --labels) choose: small pictures (64 px or less) get the `fast` recipe; photos get
`transfer` when resnet18's ImageNet weights are on this machine or can be downloaded, else
`scratch`, at an input size that suits the pictures. One line says which and why. Data whose source
has its own recipe (CIFAR-10: `fast`) keep it, exactly as before.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SMALL_PICTURE_SIDE = 64  # up to this shorter side, pictures are CIFAR-sized: the fast recipe
FAST_INPUT_SIDE = 32  # the fast recipe's network (airnet) at CIFAR's size
PHOTO_INPUT_SIDE = 224  # resnet18's, and what its ImageNet weights were trained at
SMALLEST_PHOTO_INPUT = 96
WEIGHTS_HOST = "download.pytorch.org"
# Data named by their place alone: a bare --data-dir (the first command a user runs on their own
# pictures) or --labels. A named --dataset keeps its source's defaults, as before.
PICTURE_SOURCES = (None, "labels")
TAIL = "(--recipe NAME or --model NAME chooses yourself; --recipe tutorial is the tutorial's network)"


def torch_hub_checkpoints() -> Path:
    """Where torchvision keeps downloaded weights (TORCH_HOME/hub/checkpoints), found without torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


@functools.lru_cache(maxsize=1)
def _server_answers(timeout: float = 2.0) -> bool:
    """Whether the weights' server takes a connection (asked once per process)."""
    try:
        socket.create_connection((WEIGHTS_HOST, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def pretrained_weights_reachable() -> tuple[bool, str]:
    """Whether resnet18's ImageNet weights are on this machine or their server answers, and why."""
    folder = torch_hub_checkpoints()
    if any(folder.glob("resnet18-*.pth")):
        return True, f"resnet18's ImageNet weights are in {folder}"
    if _server_answers():
        return True, f"resnet18's ImageNet weights can be downloaded from {WEIGHTS_HOST}"
    return False, f"no resnet18 ImageNet weights in {folder} and {WEIGHTS_HOST} cannot be reached"


def photo_input_side(shorter_side: int) -> int:
    """224 for pictures that big; smaller photos near their own side, in steps of 32 (at least 96)."""
    return min(PHOTO_INPUT_SIDE, max(SMALLEST_PHOTO_INPUT, shorter_side // 32 * 32))


def pictures_root(values: dict[str, Any]) -> Path | None:
    """The folder whose pictures are measured: --data-dir, else the label file's own folder."""
    if values.get("data_dir"):
        root = Path(str(values["data_dir"])).expanduser()
    elif values.get("labels"):
        root = Path(str(values["labels"])).expanduser().parent
    else:
        return None
    return root if root.is_dir() else None


def data_defaults(values: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The recipe, and the defaults it adds, that the pictures of the data `values` name choose,
    said in one line; None when the data are not a folder of pictures or none can be read."""
    from visionfit.data.sizes import typical_size

    root = pictures_root(values)
    if values.get("dataset") not in PICTURE_SOURCES or root is None:
        return None
    measured = typical_size(root)
    if measured is None:
        return None
    side, width, height = measured
    if side <= SMALL_PICTURE_SIDE:
        # airnet at 32 px, like CIFAR-10; pictures between 33 and 64 px keep their own size
        extra = {"input_size": side // 8 * 8} if side > FAST_INPUT_SIDE else {}
        size = extra.get("input_size", FAST_INPUT_SIDE)
        logger.info(
            f"no model or recipe named: the pictures are small ({width}x{height} px typical, "
            f"{SMALL_PICTURE_SIDE} px or less), so --recipe fast (airnet) at --input-size {size} {TAIL}"
        )
        return "fast", extra
    reachable, why = pretrained_weights_reachable()
    recipe = "transfer" if reachable else "scratch"
    input_side = photo_input_side(side)
    logger.info(
        f"no model or recipe named: the pictures are photos ({width}x{height} px typical), so "
        f"--recipe {recipe} (resnet18) at --input-size {input_side}: {why} {TAIL}"
    )
    return recipe, {"input_size": input_side}
