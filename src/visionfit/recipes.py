"""Named sets of defaults (`--recipe NAME`). A recipe only changes defaults: the config file and
flags still override every value it sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    values: dict[str, Any]


def _recipes(*recipes: Recipe) -> dict[str, Recipe]:
    table: dict[str, Recipe] = {}
    for recipe in recipes:
        if recipe.name in table:
            raise ValueError(f"recipe {recipe.name!r} is defined twice")
        table[recipe.name] = recipe
    return table


RECIPES = _recipes(
    Recipe(
        name="tutorial",
        description="the PyTorch tutorial's CIFAR-10 routine exactly: cifar10-quick, plain SGD "
        "lr 0.01, batch 64, 10 epochs, ToTensor only (no augmentation, no normalisation), constant "
        "lr, no shuffling (CIFAR-10's batch files are already shuffled; add --shuffle for folders), "
        "the last short batch kept",
        values={
            "model": "cifar10-quick",
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.0,
            "nesterov": False,
            "weight_decay": 0.0,
            "scheduler": "none",
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "batch_size": 64,
            "epochs": 10,
            "augment": False,
            "shuffle": False,
            "drop_last": False,
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
        },
    ),
    Recipe(
        name="fast",
        description="time-to-accuracy on CIFAR-sized (32x32) data, the default there: the airnet "
        "BatchNorm CNN, batch 512, Nesterov SGD with a warm-up and cosine decay, label smoothing, "
        "pad-crop and flip augmentation, flip test-time augmentation",
        values={
            "model": "airnet",
            "optimizer": "sgd",
            "lr": 0.4,  # peak, for batch 512 (0.1 per 128 images, the usual BatchNorm-ResNet rate)
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "scheduler": "cosine",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.2,
            "batch_size": 512,
            "eval_batch_size": 1000,
            "epochs": 10,
            "augment": True,
            "shuffle": True,
            "drop_last": True,
            "test_time_flip": True,
        },
    ),
    Recipe(
        name="transfer",
        description="fine-tune a pretrained torchvision model on your photo folder: resnet18 (or "
        "--model) from its ImageNet weights (offline: --weights FILE), the first epoch on a frozen "
        "backbone (its features computed once), then all of it with the backbone at 1/10 of the "
        "head's learning rate; TrivialAugment, label smoothing, weight averaging; 10 epochs",
        values={
            "model": "resnet18",
            "pretrained": True,
            "freeze": "backbone",
            "unfreeze_at": 2,
            "backbone_lr_scale": 0.1,
            "optimizer": "sgd",
            "lr": 0.01,  # the head's; the backbone trains at 0.001
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
            "warmup_epochs": 0.0,
            "label_smoothing": 0.1,
            "auto_augment": "trivialwide",
            "ema": 0.999,
            "batch_size": 64,
            "epochs": 10,
        },
    ),
    Recipe(
        name="scratch",
        description="train a torchvision model from random weights on your photo folder: resnet18 "
        "(or --model), Nesterov SGD with a warm-up epoch and cosine decay, TrivialAugment, random "
        "erasing, label smoothing, weight averaging, the first third of the epochs at 3/4 of the "
        "input size; 30 epochs",
        values={
            "model": "resnet18",
            "pretrained": False,
            "optimizer": "sgd",
            "lr": 0.1,  # for batch 64 from scratch, with BatchNorm
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "scheduler": "cosine",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.1,
            "auto_augment": "trivialwide",
            "random_erasing": 0.25,
            "ema": 0.999,
            "batch_size": 64,
            "epochs": 30,
            "low_res_epochs": 10,
        },
    ),
)


def recipe_names() -> tuple[str, ...]:
    return tuple(RECIPES)
