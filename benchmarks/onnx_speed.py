"""Predict throughput, onnxruntime against PyTorch: the same image files through the same
`Predictor` (decoding, resize, batching, top-k) in one process, one model pass per image (no
test-time augmentation), for 32x32 airnet and 224x224 resnet18, float32 and int8.

Untrained models with seeded random weights are timed unless `--checkpoint` names a trained airnet
checkpoint (speed does not depend on the weights). With one, the CIFAR-10 test-split accuracy of
the checkpoint on PyTorch (fp32, and visionfit's default precision), of its float32 export and of
its int8 export are printed too, with each one's top-1 agreement with PyTorch fp32. int8 models
are calibrated on `--calibration-images` CIFAR-10 training images, as `visionfit export
--quantize int8` calibrates.

    python benchmarks/onnx_speed.py --images ~/.cache/visionfit-dev/cifar10/test --count 1000 \\
        --data-dir ~/.cache/visionfit-dev/cifar10 --checkpoint runs/NAME/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

import visionfit
from visionfit.console import setup_logging
from visionfit.data.loaders import eval_loader
from visionfit.data.registry import DataSplits, load_data
from visionfit.data.transforms import PictureReader
from visionfit.engine.loops import evaluate
from visionfit.export import ExportOptions, export_onnx
from visionfit.export.quantization import PictureCalibration, quantize_file
from visionfit.inference import load_for_inference
from visionfit.models import create_model
from visionfit.prediction import expand_inputs

CASES = {"airnet": 32, "resnet18": 224}  # model → its input side


def build_checkpoint(name: str, classes: list[str], folder: Path) -> Path:
    torch.manual_seed(0)
    return visionfit.save_model(
        create_model(name, len(classes)), folder / f"{name}.safetensors", classes=classes
    )


def export_pair(
    checkpoint: Path, data: DataSplits, data_dir: str, calibration: int, folder: Path
) -> list[Path]:
    """The verified float32 export and its int8 quantization (same calibration as export's)."""
    options = ExportOptions(dataset="cifar10", data_dir=data_dir)
    float_path = export_onnx(checkpoint, folder / f"{checkpoint.stem}.onnx", options).path
    int8_path = folder / f"{checkpoint.stem}.int8.onnx"
    preprocess = load_for_inference(checkpoint, device="cpu").preprocess
    indices = random.Random(0).sample(range(len(data.train)), min(calibration, len(data.train)))
    quantize_file(float_path, int8_path, PictureCalibration(data.train, indices, preprocess))
    return [float_path, int8_path]


def images_per_second(source: Path, files: list[str], arguments: argparse.Namespace, **options: str) -> float:
    predictor = visionfit.load(source, device="cpu", flip=False, shift=0, **options)
    list(predictor.predict_sources(files[: arguments.batch_size], batch_size=arguments.batch_size))  # warm-up
    rates = []
    for _ in range(arguments.repeats):
        started = time.perf_counter()
        rows = list(predictor.predict_sources(files, top_k=3, batch_size=arguments.batch_size))
        assert len(rows) == len(files) and not any(row.error for row in rows)
        rates.append(len(files) / (time.perf_counter() - started))
    return statistics.median(rates)


def speed_rows(name: str, checkpoint: Path, exports: list[Path], files: list[str], arguments) -> list[str]:
    size = CASES[name]
    runs = [
        ("PyTorch, precision auto (visionfit's default)", checkpoint, {}),
        ("PyTorch, fp32", checkpoint, {"precision": "fp32"}),
        ("onnxruntime, float32", exports[0], {}),
        ("onnxruntime, int8", exports[1], {}),
    ]
    rates = [images_per_second(source, files, arguments, **options) for _, source, options in runs]
    return [
        f"| {name} | {size}x{size} | {label} | {rate:,.0f} | {rate / rates[1]:.2f}x |"
        for (label, _, _), rate in zip(runs, rates, strict=True)
    ]


def test_predictions(source: Path, data: DataSplits, **options: str) -> torch.Tensor:
    """Every test image's predicted class (with the model's recorded test-time augmentation)."""
    model = load_for_inference(source, device="cpu", **options)
    batches = eval_loader(
        data.test, PictureReader(model.preprocess), batch_size=256, workers=0, device=torch.device("cpu")
    )
    evaluation = evaluate(model.classifier, batches, len(model.classes), keep="predictions")
    assert evaluation.predictions is not None
    return evaluation.predictions.predicted


def accuracy_rows(checkpoint: Path, exports: list[Path], data: DataSplits) -> list[str]:
    labels = data.test.label_tensor()
    runs = [
        ("PyTorch, fp32", checkpoint, {"precision": "fp32"}),
        ("PyTorch, precision auto", checkpoint, {}),
        ("onnxruntime, float32", exports[0], {}),
        ("onnxruntime, int8", exports[1], {}),
    ]
    predicted = [test_predictions(source, data, **options) for _, source, options in runs]
    return [
        f"| {label} | {float((classes == labels).float().mean()):.2%} | "
        f"{float((classes == predicted[0]).float().mean()):.2%} |"
        for (label, _, _), classes in zip(runs, predicted, strict=True)
    ]


def main() -> None:
    setup_logging()  # export's lines, as the command prints them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="a folder (searched recursively) of images")
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (calibration, and accuracy)")
    parser.add_argument("--checkpoint", help="a trained airnet checkpoint: also time it and test accuracies")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: airnet, resnet18")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calibration-images", type=int, default=300)
    arguments = parser.parse_args()
    files = expand_inputs([arguments.images])[: arguments.count]
    data = load_data("cifar10", arguments.data_dir)
    print(
        f"{len(files)} images; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {onnxruntime.__version__}; median of {arguments.repeats} runs"
    )
    table, accuracy = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in arguments.cases.split(","):
            trained = name == "airnet" and arguments.checkpoint
            checkpoint = (
                Path(arguments.checkpoint) if trained else build_checkpoint(name, data.classes, Path(folder))
            )
            exports = export_pair(
                checkpoint, data, arguments.data_dir, arguments.calibration_images, Path(folder)
            )
            table += speed_rows(name, checkpoint, exports, files, arguments)
            if trained:
                accuracy += accuracy_rows(checkpoint, exports, data)
    print("\n| model | input | runtime | images/s | vs PyTorch fp32 |\n|---|---|---|---|---|")
    print("\n".join(table))
    if accuracy:
        print(f"\n{data.description}, test split, trained airnet {arguments.checkpoint}:")
        print("| model | test accuracy | top-1 agreement with PyTorch fp32 |\n|---|---|---|")
        print("\n".join(accuracy))


if __name__ == "__main__":
    main()
