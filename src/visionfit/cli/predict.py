"""`visionfit predict CHECKPOINT INPUT...`: classify image files, folders, globs or stdin, and print
the classes as a table, JSON lines or CSV (the work is in `visionfit.prediction`)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from visionfit.cli.arguments import (
    add_onnx_options,
    add_runtime_options,
    add_test_time_options,
    add_trust_option,
    inference_options,
    positive,
)
from visionfit.errors import UserError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images with a checkpoint or an exported .onnx file",
        description="Classify images: files, folders (recursively), globs, or - for one image on stdin. "
        "Unreadable files are reported on their row and make the exit code 1. CHECKPOINT is a "
        ".safetensors file, a run folder or an exported .onnx file (run on onnxruntime).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("inputs", metavar="INPUT", nargs="+")
    parser.add_argument("--top-k", type=positive, default=3, help="classes shown per image (default: 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead")
    parser.add_argument("--csv", metavar="PATH", help="also write the predictions as CSV to PATH")
    parser.add_argument("--batch-size", type=positive, default=256, help="(default: 256)")
    parser.add_argument(
        "--workers", type=positive, default=None, help="decoding threads (default: cores, at most 8)"
    )
    add_runtime_options(parser)
    add_test_time_options(parser)
    add_trust_option(parser)
    add_onnx_options(parser)
    parser.set_defaults(handler=run)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def run(arguments: argparse.Namespace) -> int:
    from visionfit.prediction import expand_inputs, load, prediction_record

    sources = expand_inputs(arguments.inputs)
    predictor = load(arguments.checkpoint, inference_options(arguments))
    predictions = list(predictor.predict_sources(sources, top_k=arguments.top_k, threads=arguments.workers))
    failed = sum(prediction.error is not None for prediction in predictions)
    if arguments.json:
        for prediction in predictions:
            print(json.dumps(prediction_record(prediction)))
    elif predictor.model.multilabel:
        print(_table(_label_set_rows(predictions)))
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


def _label_set_rows(predictions: list[Any]) -> list[tuple[str, ...]]:
    """A multi-label model's table: each file and its set of labels with their probabilities."""
    rows = [("file", "labels")]
    for prediction in predictions:
        if prediction.error is not None:
            rows.append((prediction.source, f"ERROR {prediction.error}"))
        else:
            rows.append((prediction.source, _label_set(prediction.top) or "(none)"))
    return rows


def _label_set(labels: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {value:.1%}" for name, value in labels)


def _write_csv(path: Path, predictions: list[Any], top_k: int) -> None:
    if predictions and any(prediction.multilabel for prediction in predictions):
        _write_label_sets_csv(path, predictions)
        return
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


def _write_label_sets_csv(path: Path, predictions: list[Any]) -> None:
    """file, labels (a;b), their probabilities (0.91;0.64), error."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["file", "labels", "probabilities", "error"])
            for prediction in predictions:
                names = ";".join(name for name, _ in prediction.top)
                values = ";".join(f"{value:.6f}" for _, value in prediction.top)
                writer.writerow([prediction.source, names, values, prediction.error or ""])
    except OSError as error:
        raise UserError(f"cannot write --csv {path}: {error.strerror or error}") from None
