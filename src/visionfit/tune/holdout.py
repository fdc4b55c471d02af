"""The validation split a study is measured on: a stratified share of the TRAINING images, never
the test split.

ADAPTER until the data issue's validation split (`--val-fraction` holding validation out of train)
is on main: the study writes a folder dataset of its own, VALIDATION/train/<class>/ and
VALIDATION/val/<class>/ (links to the training files; in-memory images such as CIFAR's batch files
are written as PNGs), and every trial trains on its train/ and is measured on its val/ (a trial's
run reports that part under "test"). Built once per study by whichever worker comes first.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from visionfit.config import TrainConfig
from visionfit.data.registry import SplitShares, load_data
from visionfit.data.samples import Samples

READY = "complete"  # written last: a folder without it was cut short

logger = logging.getLogger(__name__)


def stratified_indices(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) sample indices: `fraction` of every class held out (at least one image
    of a class with two or more), drawn with `seed`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    train, validation = [], []
    for label in sorted(set(labels)):
        members = [index for index, value in enumerate(labels) if value == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = round(len(members) * fraction)
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        validation += [members[position] for position in order[:count]]
        train += [members[position] for position in order[count:]]
    return sorted(train), sorted(validation)


def validation_folder(config: TrainConfig, folder: Path, fraction: float, seed: int) -> Path:
    """The study's train/ + val/ folder dataset cut from `config`'s training split (made once)."""
    if (folder / READY).is_file():
        return folder
    data = load_data(
        config.dataset, config.data_dir, shares=SplitShares(config.test_fraction, seed=config.seed)
    )
    labels = data.train.label_tensor().tolist()
    train, validation = stratified_indices(labels, fraction, seed)
    staging = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for split, indices in (("train", train), ("val", validation)):
        for index in indices:
            _place(data.train, index, staging / split / data.classes[labels[index]])
    (staging / READY).write_text(
        f"{len(validation)} of {len(labels)} training images of {data.description} held out "
        f"for validation (stratified, seed {seed})\n",
        encoding="utf-8",
    )
    try:
        staging.rename(folder)  # atomic: a second worker building it at once keeps the first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"validation split: {(folder / READY).read_text(encoding='utf-8').strip()}; in {folder}")
    return folder


def _place(samples: Samples, index: int, target: Path) -> None:
    """Put sample `index` in the folder `target`: a link to its file, or its pixels as a PNG."""
    target.mkdir(parents=True, exist_ok=True)
    files = samples.files()
    if files:
        source = Path(files[index]).resolve()
        (target / f"{index:06d}-{source.name}").symlink_to(source)
        return
    from torchvision.transforms.v2.functional import to_pil_image

    picture = samples.picture(index)
    image = picture if hasattr(picture, "save") else to_pil_image(picture)
    image.save(target / f"{index:06d}.png")
