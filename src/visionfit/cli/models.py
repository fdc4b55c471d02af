"""`visionfit models [NAME]`: the registered models, or one in detail."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "models",
        help="list the registered models (the tutorial CNN and every torchvision classifier)",
        description="List every model with its parameter count (torchvision's: with the 1000-way "
        "ImageNet head), default input size and whether pretrained weights exist; with NAME, that "
        "model's details.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="show one model in detail")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    name = arguments.name
    from visionfit.models import get_model_spec, list_models
    from visionfit.models.registry import count_parameters

    if name is not None:
        spec = get_model_spec(name)
        accepted = spec.accepted_args()
        details = {
            "name": spec.name,
            "family": spec.family,
            "description": spec.description,
            "parameters": f"{count_parameters(spec.name):,}",
            "input": f"{spec.input_size}x{spec.input_size} px, resized to "
            f"{round(spec.input_size / spec.crop_fraction)} then centre-cropped, {spec.interpolation}",
            "mean": ", ".join(f"{value:.4f}" for value in spec.mean),
            "std": ", ".join(f"{value:.4f}" for value in spec.std),
            "pretrained": spec.pretrained_weights or "none",
            "arguments": "see torchvision's builder"
            if accepted is None
            else ", ".join(sorted(accepted)) or "none",
        }
        for key, value in details.items():
            print(f"{key + ':':<12} {value}")
        return 0
    rows = [
        (
            spec.name,
            f"{count_parameters(spec.name) / 1e6:.2f}M",
            f"{spec.input_size}px",
            "yes" if spec.pretrained_weights else "no",
            spec.family,
        )
        for spec in list_models()
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'name':<{width}}  {'params':>8}  {'input':>5}  pretrained  family")
    for row_name, parameters, size, pretrained, family in rows:
        print(f"{row_name:<{width}}  {parameters:>8}  {size:>5}  {pretrained:<10}  {family}")
    print(
        "\nAlso: your own nn.Module as --model path/to/model.py:ClassName or package.module:ClassName. "
        "`visionfit models NAME` shows one model."
    )
    return 0
