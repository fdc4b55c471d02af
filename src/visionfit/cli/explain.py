"""`visionfit explain CHECKPOINT IMAGES...`: where the model looked, as heatmaps over the pictures
(the work is in `visionfit.explaining`, with the grad-cam package)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from visionfit.cli.arguments import add_trust_option, positive

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")  # explaining.METHODS


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "explain",
        help="show where the model looked: a Grad-CAM heatmap over each picture, with its top classes",
        description="Write, per image, the picture with a class activation map (Grad-CAM by default, "
        "from the grad-cam package) of its predicted class over it, as OUT/NAME.cam.png, and print "
        "its top classes. The layer is chosen per model family (the last convolution or stage); "
        "--layer names another. Needs the checkpoint (an ONNX export has no gradients) and "
        'pip install "visionfit[explain]".',
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    parser.add_argument(
        "--class", dest="class_name", metavar="NAME", help="explain this class (default: the predicted one)"
    )
    parser.add_argument("--method", choices=METHODS, default="gradcam", help="(default: gradcam)")
    parser.add_argument(
        "--layer", metavar="NAME", help="the layer to explain (default: chosen per model family)"
    )
    parser.add_argument("--out", metavar="DIR", default="explanations", help="(default: explanations)")
    parser.add_argument("--top-k", type=positive, default=3, help="(default: 3)")
    parser.add_argument("--batch-size", type=positive, default=32, help="(default: 32)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default: auto)")
    add_trust_option(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.errors import UserError
    from visionfit.explaining import NO_CHECKPOINT, Explainer, explain_files
    from visionfit.inference import load_for_inference
    from visionfit.prediction import expand_inputs

    if Path(arguments.checkpoint).suffix.lower() == ".onnx":
        raise UserError(NO_CHECKPOINT)
    model = load_for_inference(
        arguments.checkpoint,
        device=arguments.device,
        precision="fp32",
        model_code="trust" if arguments.trust_model_code else "recorded",
    )
    explainer = Explainer(model, method=arguments.method, layer=arguments.layer)
    rows = explain_files(
        explainer,
        expand_inputs(arguments.inputs),
        Path(arguments.out).expanduser(),
        class_name=arguments.class_name,
        top_k=arguments.top_k,
        batch_size=arguments.batch_size,
    )
    print(f"{arguments.method} on layer {explainer.layer} of {model.source}")
    for row in rows:
        if row.error is not None:
            print(f"{row.source}  ERROR  {row.error}")
            continue
        top = ", ".join(f"{name} {probability:.1%}" for name, probability in row.top)
        print(f"{row.source}  {top}  map of {row.explained}: {row.overlay_path}")
    failed = sum(row.error is not None for row in rows)
    if failed:
        print(f"visionfit: {failed} of {len(rows)} input(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
