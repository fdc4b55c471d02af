"""The `eval`, `predict` and `import` subcommands: their flags and the printing of their results.

Parsing lives here and the work in `evaluation`, `prediction` and `importing`; torch is imported
only when one of these commands runs, so `visionfit --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from visionfit.errors import UserError


def _float_triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.5,0.5,0.5, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.5,0.5,0.5, got {text!r}")
    return values  # type: ignore[return-value]


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _shift(text: str) -> int:
    from visionfit.config import MAX_TEST_TIME_SHIFT

    value = _whole_number(text)
    if not 0 <= value <= MAX_TEST_TIME_SHIFT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_TEST_TIME_SHIFT}, got {value}")
    return value


def _positive(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Spelled out here rather than imported from visionfit.runtime, which imports torch: `--help` stays fast.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = (
    "forward-pass precision (default: auto, as in train: bf16 on CPUs with AVX512-BF16 or AMX and "
    "on GPUs that have it, fp16 on older GPUs, fp32 otherwise)"
)


def add_commands(commands: Any) -> None:
    """Add `eval`, `predict` and `import` to the CLI's subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset split: metrics, confusion matrix, mistakes",
        description="Evaluate a checkpoint (a .safetensors file or a run folder). Without --dataset "
        "and --data-dir, the data it was trained on.",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT")
    evaluate.add_argument("--dataset", choices=("cifar10", "cifar10-sample", "folder"), help="as in train")
    evaluate.add_argument("--data-dir", metavar="DIR", help="as in train")
    evaluate.add_argument(
        "--split", choices=("train", "val", "test"), default="test", help="(default: test; val = test)"
    )
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="write metrics.json, confusion_matrix.csv, confusion_matrix.png and mistakes.png here",
    )
    evaluate.add_argument("--batch-size", type=_positive, default=256, help="(default: 256)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    evaluate.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    evaluate.add_argument("--precision", choices=PRECISION_CHOICES, default="auto", help=PRECISION_HELP)

    predict = commands.add_parser(
        "predict",
        help="classify images with a checkpoint",
        description="Classify images: files, folders (recursively), globs, or - for one image on stdin. "
        "Unreadable files are reported on their row and make the exit code 1.",
    )
    predict.add_argument("checkpoint", metavar="CHECKPOINT")
    predict.add_argument("inputs", metavar="INPUT", nargs="+")
    predict.add_argument("--top-k", type=_positive, default=3, help="classes shown per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image instead")
    predict.add_argument("--csv", metavar="PATH", help="also write the predictions as CSV to PATH")
    predict.add_argument("--batch-size", type=_positive, default=256, help="(default: 256)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    predict.add_argument(
        "--workers", type=_positive, default=None, help="decoding threads (default: cores, at most 8)"
    )
    predict.add_argument("--precision", choices=PRECISION_CHOICES, default="auto", help=PRECISION_HELP)
    predict.add_argument(
        "--test-time-flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image's prediction with its mirror image's, at twice the model time "
        "(default: as the checkpoint's training tested)",
    )
    predict.add_argument(
        "--test-time-shift",
        type=_shift,
        default=None,
        metavar="PX",
        help="also classify each image moved PX pixels up-left and down-right, at three times the "
        "model time; 0: off (default: as the checkpoint's training tested)",
    )

    importer = commands.add_parser(
        "import",
        help="turn a tutorial torch.save file into a visionfit checkpoint",
        description="Import torch.save(model) or torch.save(model.state_dict()) files without running "
        "code from them. The checkpoint records the tutorial's preprocessing (resize to 32x32, "
        "ToTensor, no Normalize) unless --input-size/--mean/--std say otherwise.",
    )
    importer.add_argument("old", metavar="OLD.pth")
    importer.add_argument("--model", default="cifar10-quick", help="architecture (default: cifar10-quick)")
    importer.add_argument(
        "--model-arg", metavar="KEY=VALUE", action="append", default=[], help="builder argument"
    )
    importer.add_argument("--classes", metavar="A,B,...", help="class names in the model's output order")
    importer.add_argument("--classes-from", metavar="DATA_DIR", help="class names from a folder dataset")
    importer.add_argument(
        "--input-size", type=_positive, help="(default: the model's own, 32 for the tutorial)"
    )
    importer.add_argument("--mean", type=_float_triple, default=(0.0, 0.0, 0.0), help="(default: 0,0,0)")
    importer.add_argument("--std", type=_float_triple, default=(1.0, 1.0, 1.0), help="(default: 1,1,1)")
    importer.add_argument("--out", metavar="PATH", help="(default: OLD with the .safetensors suffix)")


def run_eval(arguments: argparse.Namespace) -> int:
    from visionfit.engine.metrics import format_report
    from visionfit.evaluation import evaluate_checkpoint, format_confusion, write_report

    result = evaluate_checkpoint(
        arguments.checkpoint,
        dataset=arguments.dataset,
        data_dir=arguments.data_dir,
        split=arguments.split,
        batch_size=arguments.batch_size,
        device=arguments.device,
        workers=arguments.workers,
        precision=arguments.precision,
    )
    print(f"{result.checkpoint} on the {result.description}")
    print(format_report(result.report, result.classes))
    print()
    print(format_confusion(result.report["confusion_matrix"], result.classes))
    if arguments.out:
        written = write_report(Path(arguments.out).expanduser(), result)
        print(f"wrote {', '.join(path.name for path in written)} to {arguments.out}")
    return 0


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def run_predict(arguments: argparse.Namespace) -> int:
    from visionfit.prediction import expand_inputs, load, prediction_record

    sources = expand_inputs(arguments.inputs)
    predictor = load(
        arguments.checkpoint,
        device=arguments.device,
        precision=arguments.precision,
        flip=arguments.test_time_flip,
        shift=arguments.test_time_shift,
    )
    predictions = list(
        predictor.predict_sources(
            sources, top_k=arguments.top_k, batch_size=arguments.batch_size, threads=arguments.workers
        )
    )
    failed = sum(prediction.error is not None for prediction in predictions)
    if arguments.json:
        for prediction in predictions:
            print(json.dumps(prediction_record(prediction)))
    else:
        rows = [("file", "class", "probability", "next classes" if arguments.top_k > 1 else "")]
        for prediction in predictions:
            if prediction.error is not None:
                rows.append((prediction.source, "ERROR", "", prediction.error))
                continue
            (label, probability), rest = prediction.top[0], prediction.top[1:]
            following = ", ".join(f"{name} {value:.1%}" for name, value in rest)
            rows.append((prediction.source, label, f"{probability:.1%}", following))
        print(_table(rows))
    if arguments.csv:
        _write_csv(Path(arguments.csv).expanduser(), predictions, arguments.top_k)
    if failed:
        print(f"visionfit: {failed} of {len(predictions)} input(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _write_csv(path: Path, predictions: list[Any], top_k: int) -> None:
    header = ["file"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow([*header, "error"])
            for prediction in predictions:
                cells = [prediction.source]
                for rank in range(top_k):
                    if rank < len(prediction.top):
                        name, value = prediction.top[rank]
                        cells += [name, f"{value:.6f}"]
                    else:
                        cells += ["", ""]
                writer.writerow([*cells, prediction.error or ""])
    except OSError as error:
        raise UserError(f"cannot write --csv {path}: {error.strerror or error}") from None


def run_import(arguments: argparse.Namespace) -> int:
    from visionfit.cli import _parse_model_arg
    from visionfit.importing import import_checkpoint, read_class_names

    classes = read_class_names(arguments.classes, arguments.classes_from)
    model_args = {}
    for text in arguments.model_arg:
        try:
            key, value = _parse_model_arg(text)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"--model-arg: {error}") from None
        model_args[key] = value
    output, kind = import_checkpoint(
        arguments.old,
        model=arguments.model,
        classes=classes,
        output=arguments.out,
        model_args=model_args,
        input_size=arguments.input_size,
        mean=arguments.mean,
        std=arguments.std,
    )
    print(f"imported {arguments.old} ({kind}) as {arguments.model} with {len(classes)} classes: {output}")
    return 0


RUNNERS = {"eval": run_eval, "predict": run_predict, "import": run_import}
