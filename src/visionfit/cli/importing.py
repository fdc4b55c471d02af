"""`visionfit import OLD.pth`: a tutorial's torch.save file → a visionfit checkpoint, without
running code from it (the work is in `visionfit.importing`)."""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.cli.arguments import float_triple, key_value, positive
from visionfit.errors import UserError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "import",
        help="turn a tutorial torch.save file into a visionfit checkpoint",
        description="Import torch.save(model) or torch.save(model.state_dict()) files without running "
        "code from them. The checkpoint records the tutorial's preprocessing (resize to 32x32, "
        "ToTensor, no Normalize) unless --input-size/--mean/--std say otherwise.",
    )
    parser.add_argument("old", metavar="OLD.pth")
    parser.add_argument("--model", default="cifar10-quick", help="architecture (default: cifar10-quick)")
    parser.add_argument(
        "--model-arg", metavar="KEY=VALUE", action="append", default=[], help="builder argument"
    )
    parser.add_argument("--classes", metavar="A,B,...", help="class names in the model's output order")
    parser.add_argument("--classes-from", metavar="DATA_DIR", help="class names from a folder dataset")
    parser.add_argument("--input-size", type=positive, help="(default: the model's own, 32 for the tutorial)")
    parser.add_argument("--mean", type=float_triple, default=(0.0, 0.0, 0.0), help="(default: 0,0,0)")
    parser.add_argument("--std", type=float_triple, default=(1.0, 1.0, 1.0), help="(default: 1,1,1)")
    parser.add_argument("--out", metavar="PATH", help="(default: OLD with the .safetensors suffix)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.importing import import_checkpoint, read_class_names, tutorial_preprocess

    classes = read_class_names(arguments.classes, arguments.classes_from)
    model_args = {}
    for text in arguments.model_arg:
        try:
            key, value = key_value(text)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"--model-arg: {error}") from None
        model_args[key] = value
    output, kind = import_checkpoint(
        arguments.old,
        model=arguments.model,
        classes=classes,
        output=arguments.out,
        model_args=model_args,
        preprocess=tutorial_preprocess(arguments.model, arguments.input_size, arguments.mean, arguments.std),
    )
    print(f"imported {arguments.old} ({kind}) as {arguments.model} with {len(classes)} classes: {output}")
    return 0
