"""`visionfit eval CHECKPOINT`: a checkpoint's metrics, confusion matrix and worst mistakes on a
dataset split (the work is in `visionfit.evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from visionfit.choices import SPLITS
from visionfit.cli.arguments import (
    add_onnx_options,
    add_runtime_options,
    add_trust_option,
    inference_options,
    positive,
)
from visionfit.data.registry import dataset_names


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset split: metrics, confusion matrix, mistakes",
        description="Evaluate a checkpoint (a .safetensors file or a run folder) or an exported .onnx "
        "file (on onnxruntime). Without --dataset and --data-dir, the data it was trained on.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("--dataset", choices=dataset_names(), help="as in train")
    parser.add_argument("--data-dir", metavar="DIR", help="as in train")
    parser.add_argument("--split", choices=SPLITS, default="test", help="(default: test; val = test)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write metrics.json, confusion_matrix.csv, confusion_matrix.png, mistakes.png and "
        "reliability.png here",
    )
    parser.add_argument("--batch-size", type=positive, default=256, help="(default: 256)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    add_runtime_options(parser)
    add_trust_option(parser)
    add_onnx_options(parser)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from visionfit.console import setup_logging
    from visionfit.engine.metrics import format_report
    from visionfit.evaluation import evaluate_checkpoint, format_confusion, write_report

    setup_logging()  # which data were read, e.g. "reading it as --dataset folder"
    result = evaluate_checkpoint(
        arguments.checkpoint,
        inference_options(arguments),
        dataset=arguments.dataset,
        data_dir=arguments.data_dir,
        split=arguments.split,
        workers=arguments.workers,
    )
    print(f"{result.checkpoint} on the {result.description}")
    if result.report.get("task") == "multilabel":
        from visionfit.engine.multilabel import format_multilabel_report

        print(format_multilabel_report(result.report, result.classes))
    else:
        print(format_report(result.report, result.classes))
        if result.uncalibrated is not None:
            print(
                f"temperature {result.temperature:.3f}: ECE {result.uncalibrated['ece']:.2%} before, "
                f"{result.report['calibration']['ece']:.2%} after (NLL {result.uncalibrated['nll']:.4f} → "
                f"{result.report['calibration']['nll']:.4f})"
            )
        print()
        print(format_confusion(result.report["confusion_matrix"], result.classes))
    if arguments.out:
        written = write_report(Path(arguments.out).expanduser(), result)
        print(f"wrote {', '.join(path.name for path in written)} to {arguments.out}")
    return 0
