"""How doctor runs: the options the CLI's flags fill."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionfit.doctor.checks import Settings

# The quick models' length: 12 epochs, the first half at 3/4 of the input side (about 0.55 of a
# full epoch's compute each), about the cost of 8 full-size epochs. On CIFAR-10 with 5% of labels
# flipped (two folds of 25,000 pictures, machine C, about 5 minutes a fold) they classify their
# held-out folds at 79.3-79.7% with flip TTA, where 8 full-size epochs reached 77.6-77.8%.
QUICK_EPOCHS = 12
# Below this input side no low-resolution epochs: tiny pictures train fast anyway, and 3/4 of a few
# pixels is less than the quick model's network takes (airnet needs 9).
LOW_RES_FROM_SIDE = 24


@dataclass
class DoctorOptions:
    """How doctor runs (the CLI's flags)."""

    output: Path = Path("doctor-report")
    use_model: bool = True  # False: only the checks that need no model
    model: str | None = None  # a checkpoint or run folder whose penultimate layer gives features
    pretrained: str | None = None  # a torchvision model whose pretrained weights give features
    weights: str | None = None  # --pretrained's weights from this local file
    no_pretrained: bool = False  # quick models even when pretrained weights are on the machine
    folds: int | None = None  # K of the cross-validation (None: `evidence.default_folds`)
    epochs: int = QUICK_EPOCHS  # of each fold's quick model, when no --model is given
    device: str = "auto"
    seed: int = 0  # of the folds and the quick models
    workers: int | None = None
    fail_on: tuple[str, ...] = ()
    grid_size: int = 16
    tensorboard: bool = False
    settings: Settings = field(default_factory=Settings)


QUICK_RECIPE = "fast"  # the quick models' training recipe (airnet, the CIFAR time-to-accuracy one)


def quick_run(options: DoctorOptions, side: int, work: Path, fold: int) -> dict:
    """The train settings of fold `fold`'s quick model (single- and multi-label alike)."""
    return {
        "recipe": QUICK_RECIPE,
        "input_size": side,
        "epochs": options.epochs,
        "low_res_epochs": options.epochs // 2 if side >= LOW_RES_FROM_SIDE else 0,
        "seed": options.seed + fold,
        "device": options.device,
        "run_dir": str(work / "runs"),
        "name": f"fold{fold}",
        "test_every": options.epochs,
        "tensorboard": False,
        "bad_images": "skip",
    }
