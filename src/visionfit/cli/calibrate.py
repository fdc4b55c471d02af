"""`visionfit calibrate CHECKPOINT --split val`: fit the checkpoint's temperature on data you name
and store it in the checkpoint (the work is in `visionfit.calibrating`)."""

from __future__ import annotations

import argparse
from typing import Any

from visionfit.cli.arguments import add_trust_option, positive
from visionfit.data.registry import dataset_names

CALIBRATION_SPLITS = ("val", "train", "test")  # as visionfit.calibrating, without importing torch


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="fit a checkpoint's temperature on held-out data so its probabilities mean what they say",
        description="Temperature scaling: fit the one number T that makes softmax(logits / T) honest "
        "(lowest negative log-likelihood) on held-out data, and store it in the checkpoint, whose "
        "predict, eval, serve and export then apply it. The predicted classes never change. Fit it "
        "on a validation split, never on the test set you report on: the split is always named.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR")
    parser.add_argument(
        "--split",
        choices=CALIBRATION_SPLITS,
        required=True,
        help="the split to fit on: val (a validation split held out of train); train or test only "
        "when you mean it (train gives a too-low temperature; test spoils it as a measure)",
    )
    parser.add_argument("--dataset", choices=dataset_names(), help="as in train (default: the checkpoint's)")
    parser.add_argument("--data-dir", metavar="DIR", help="as in train (default: the checkpoint's)")
    parser.add_argument(
        "--out", metavar="PATH", help="write the calibrated checkpoint here (default: update it in place)"
    )
    parser.add_argument("--batch-size", type=positive, default=256, help="(default: 256)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default: auto)")
    add_trust_option(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.calibrating import calibrate_checkpoint
    from visionfit.engine.calibration import format_calibration
    from visionfit.inference.options import InferenceOptions

    result = calibrate_checkpoint(
        arguments.checkpoint,
        split=arguments.split,
        dataset=arguments.dataset,
        data_dir=arguments.data_dir,
        out=arguments.out,
        options=InferenceOptions(
            device=arguments.device,
            batch_size=arguments.batch_size,
            model_code="trust" if arguments.trust_model_code else "recorded",
        ),
    )
    if result.warning:
        print(f"warning: fitted on the {arguments.split} split: {result.warning}")
    print(f"temperature {result.temperature:.4f}, fitted on {result.count} images of the {result.data}")
    print(f"  before: {format_calibration(result.before)}")
    print(f"  after:  {format_calibration(result.after)}")
    print(f"wrote {result.checkpoint}")
    return 0
