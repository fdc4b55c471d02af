"""Argument types and option groups that several subcommands share, each written once.

Nothing here imports torch: `visionfit --help` builds every parser from these.
"""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.choices import DEVICE_HELP, MAX_TEST_TIME_SHIFT, PRECISION_HELP, PRECISIONS


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    """A share strictly between 0 and 1, such as --test-fraction's."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value:g}")
    return value


def port(text: str) -> int:
    """A TCP port number, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def shift(text: str) -> int:
    value = whole_number(text)
    if not 0 <= value <= MAX_TEST_TIME_SHIFT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_TEST_TIME_SHIFT}, got {value}")
    return value


def float_triple(text: str) -> tuple[float, float, float]:
    message = f"expected three numbers like 0.5,0.5,0.5, got {text!r}"
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(message)
    return values  # type: ignore[return-value]


def key_value(text: str) -> tuple[str, Any]:
    """`--model-arg KEY=VALUE`: YAML scalars (64 → int, 0.5 → float, true → bool, else text)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    import yaml

    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().replace("-", "_"), value


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--device and --precision, chosen as training chooses them."""
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=f"forward-pass precision (default: auto, as in train; {PRECISION_HELP})",
    )


def add_test_time_options(parser: argparse.ArgumentParser) -> None:
    """--test-time-flip/--no-test-time-flip and --test-time-shift, defaulting to the checkpoint's."""
    parser.add_argument(
        "--test-time-flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image's prediction with its mirror image's, at twice the model time "
        "(default: as the checkpoint's training tested)",
    )
    parser.add_argument(
        "--test-time-shift",
        type=shift,
        default=None,
        metavar="PX",
        help="also classify each image moved PX pixels up-left and down-right, at three times the "
        "model time; 0: off (default: as the checkpoint's training tested)",
    )


def add_trust_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--trust-model-code",
        action="store_true",
        help=help
        or "run a checkpoint's own model file (path.py:Class) even when it is not the file training "
        "used; without it such a checkpoint is refused (an ONNX export shares a model without code)",
    )


def inference_options(arguments: argparse.Namespace, *, untrusted_code: str = "recorded") -> Any:
    """The `InferenceOptions` of predict, eval, export and serve from their flags (those a command
    lacks keep their defaults). `--trust-model-code` sets the "trust" policy; without it a command
    runs `untrusted_code`: "recorded" (only the file training used) or "refuse" (a service)."""
    from visionfit.inference.options import InferenceOptions

    flags = {
        "device": getattr(arguments, "device", "auto"),
        "precision": getattr(arguments, "precision", "auto"),
        "flip": getattr(arguments, "test_time_flip", None),
        "shift": getattr(arguments, "test_time_shift", None),
        "batch_size": getattr(arguments, "batch_size", 256),
        "model_code": "trust" if arguments.trust_model_code else untrusted_code,
        "classes": getattr(arguments, "classes", None),
        "input_size": getattr(arguments, "input_size", None),
    }
    return InferenceOptions(**flags)


def class_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected at least two comma-separated class names, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"class names repeat in {text!r}")
    return names


def add_onnx_options(parser: argparse.ArgumentParser) -> None:
    """--classes and --input-size: what an ONNX classifier without visionfit metadata cannot say."""
    group = parser.add_argument_group("ONNX files without visionfit metadata")
    group.add_argument(
        "--classes",
        type=class_names,
        metavar="A,B,...",
        help="the class names of the model's outputs, in order (for a visionfit export: renames them)",
    )
    group.add_argument(
        "--input-size",
        type=positive,
        metavar="N",
        help="the side of the square float RGB [0, 1] NCHW input the graph takes (default: its fixed size)",
    )
