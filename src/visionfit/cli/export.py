"""`visionfit export CHECKPOINT`: the model as one ONNX file that carries its classes and
preprocessing, verified against PyTorch before it is written (the work is in `visionfit.export`)."""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.choices import EXPORT_FORMATS, QUANTIZE_MODES
from visionfit.cli.arguments import add_trust_option, inference_options, positive
from visionfit.data.registry import dataset_names


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX (classes and preprocessing inside), verified",
        description="Export a checkpoint (a .safetensors file or a run folder) to one self-contained "
        "ONNX file: float RGB in [0, 1], NCHW, at the model's input size, any batch size, with the "
        "checkpoint's mean/std normalisation inside the graph; outputs logits and probabilities. "
        "Classes, resize, normalisation and test-time augmentation are in its metadata (JSON). "
        "Before it is written, the file passes onnx.checker and matches PyTorch on onnxruntime at "
        "batch 1, 2 and 7, on test images of the checkpoint's data when they are here. "
        'Needs pip install "visionfit[export]".',
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="(default: onnx)")
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="the .onnx file to write (default: beside the checkpoint, NAME.onnx; NAME.int8.onnx with "
        "--quantize int8)",
    )
    parser.add_argument(
        "--opset", type=positive, default=None, metavar="N", help="ONNX opset (default: the exporter's)"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=None,
        help="write a static int8 model (onnxruntime's quantizer, calibrated on training images) and "
        "print its test accuracy and speed next to the float model's",
    )
    parser.add_argument(
        "--calibration-images",
        type=positive,
        default=300,
        metavar="N",
        help="training images to calibrate int8 on (default: 300)",
    )
    parser.add_argument(
        "--dataset", choices=dataset_names(), help="data for the checks (default: the checkpoint's)"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="as in train (default: the checkpoint's)")
    add_trust_option(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.console import setup_logging
    from visionfit.export import ExportOptions, export_onnx

    setup_logging()  # each step's line
    options = ExportOptions(
        format_name=arguments.format,
        opset=arguments.opset,
        quantize=arguments.quantize,
        calibration_images=arguments.calibration_images,
        dataset=arguments.dataset,
        data_dir=arguments.data_dir,
    )
    export_onnx(arguments.checkpoint, arguments.out, options, inference_options(arguments))
    return 0
