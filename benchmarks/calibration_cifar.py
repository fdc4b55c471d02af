"""Calibration on the CIFAR-10 dev split: ECE (and NLL) on the test split before and after
temperature scaling fitted on a validation split held out of train, fast recipe, over seeds.

    python benchmarks/calibration_cifar.py --seeds 0 1 2 --epochs 10 \\
        --data-dir ~/.cache/visionfit-dev/cifar10

The dev split is ROOT/train (45,000 images) and ROOT/test (5,000). Each run is an ordinary
`visionfit train --recipe fast --val-fraction 0.1 --seed S`: 10% of each class of train is held out
as the validation split (train's own stratified draw), the run trains on the other 40,500 images,
chooses its best epoch on validation, and at its end fits the temperature there (the default
--calibrate) and measures the test split once. This script then evaluates the best checkpoint on the
test split in float32, before and after the temperature (`evaluation.evaluate_checkpoint`).
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import visionfit
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.evaluation import evaluate_checkpoint, write_report
from visionfit.inference import InferenceOptions

VALIDATION_FRACTION = 0.1


def run_seed(seed: int, arguments: argparse.Namespace, work: Path) -> dict:
    started = time.perf_counter()
    result = visionfit.train(
        recipe="fast",
        dataset="folder",
        data_dir=arguments.data_dir,
        val_fraction=VALIDATION_FRACTION,
        seed=seed,
        epochs=arguments.epochs,
        run_dir=str(work / "runs"),
        name=f"calibration-s{seed}",
        tensorboard=False,
    )
    trained = time.perf_counter() - started
    checkpoint = result.best_checkpoint
    calibration = load_checkpoint(checkpoint).metadata["calibration"]  # fitted by train on validation
    fp32 = InferenceOptions(precision="fp32")
    test = evaluate_checkpoint(checkpoint, fp32, dataset="folder", data_dir=arguments.data_dir, split="test")
    assert test.uncalibrated is not None
    if arguments.report is not None:  # metrics.json, reliability.png, mistakes_cam.png, ... per seed
        write_report(arguments.report / f"seed{seed}", test)
    return {
        "seed": seed,
        "accuracy": test.report["accuracy"],
        "temperature": calibration["temperature"],
        "ece_before": test.uncalibrated["ece"],
        "ece_after": test.report["calibration"]["ece"],
        "nll_before": test.uncalibrated["nll"],
        "nll_after": test.report["calibration"]["nll"],
        "mce": (test.uncalibrated["mce"], test.report["calibration"]["mce"]),
        "brier": (test.uncalibrated["brier"], test.report["calibration"]["brier"]),
        "validation_ece": (calibration["ece_before"], calibration["ece_after"]),
        "train_seconds": trained,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--report", type=Path, help="write each seed's eval report (figures) here")
    parser.add_argument("--data-dir", default=str(Path("~/.cache/visionfit-dev/cifar10").expanduser()))
    arguments = parser.parse_args()
    print(
        f"# {platform.node()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {' '.join(sys.argv)}",
        flush=True,
    )
    print(
        "| seed | test accuracy | T | test ECE before | test ECE after | test NLL before | after "
        "| MCE before → after | Brier before → after | validation ECE before → after | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="visionfit-calibration-") as work:
        for seed in arguments.seeds:
            row = run_seed(seed, arguments, Path(work))
            print(
                f"| {row['seed']} | {row['accuracy']:.2%} | {row['temperature']:.3f} | "
                f"{row['ece_before']:.2%} | {row['ece_after']:.2%} | {row['nll_before']:.4f} | "
                f"{row['nll_after']:.4f} | {row['mce'][0]:.2%} → {row['mce'][1]:.2%} | "
                f"{row['brier'][0]:.3f} → {row['brier'][1]:.3f} | "
                f"{row['validation_ece'][0]:.2%} → {row['validation_ece'][1]:.2%} "
                f"| {row['train_seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
