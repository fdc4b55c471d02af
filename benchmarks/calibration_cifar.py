"""Calibration on the CIFAR-10 dev split: ECE (and NLL) on the test split before and after
temperature scaling fitted on a validation split held out of train, fast recipe, over seeds.

    python benchmarks/calibration_cifar.py --seeds 0 1 2 --epochs 10 \\
        --data-dir ~/.cache/visionfit-dev/cifar10

The dev split is ROOT/train (45,000 images) and ROOT/test (5,000). The validation split is held out
here, by this script, because train's own validation split (--val-fraction) has not landed yet: 10%
of each class of train (seed 1000 + S) goes to HOLDOUT/val/, the rest to HOLDOUT/train/ (symbolic
links), and a folder dataset with train/ and val/ holds val/ out. So the run trains on 40,500
images, its per-epoch test (and best epoch) is the validation split, the temperature is fitted
there (`calibrating.fit_on_samples`), and the test split is measured once at the end, before and
after (`evaluation.evaluate_checkpoint`, float32).
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import visionfit
from visionfit.calibrating import CalibrationResult, fit_on_samples, store_temperature
from visionfit.data.folder import stratified_split
from visionfit.data.registry import load_data
from visionfit.evaluation import evaluate_checkpoint, write_report
from visionfit.inference import InferenceOptions, load_for_inference

VALIDATION_FRACTION = 0.1


def holdout_tree(data_dir: str, seed: int, root: Path) -> Path:
    """ROOT/train and ROOT/val of symbolic links: 10% of each class of the dev train split (seed
    1000 + S) in val/, the rest in train/. A folder dataset with train/ and val/ holds val/ out."""
    data = load_data("folder", data_dir)
    train, validation = stratified_split(data.train, len(data.classes), VALIDATION_FRACTION, seed + 1000)
    for split, samples in (("train", train), ("val", validation)):
        for source, label in zip(samples.paths, samples.labels, strict=True):
            link = root / split / data.classes[label] / source.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve())
    return root


def run_seed(seed: int, arguments: argparse.Namespace, work: Path) -> dict:
    holdout = holdout_tree(arguments.data_dir, seed, work / f"holdout-s{seed}")
    started = time.perf_counter()
    result = visionfit.train(
        recipe="fast",
        dataset="folder",
        data_dir=str(holdout),
        seed=seed,
        epochs=arguments.epochs,
        run_dir=str(work / "runs"),
        name=f"calibration-s{seed}",
        tensorboard=False,
    )
    trained = time.perf_counter() - started
    checkpoint = result.best_checkpoint
    model = load_for_inference(checkpoint, precision="fp32", calibrated=False)
    validation = load_data("folder", str(holdout)).test  # the val/ folder
    temperature, before, after = fit_on_samples(model, validation)
    fitted = CalibrationResult(checkpoint, temperature, "validation split", len(validation), before, after)
    store_temperature(checkpoint, fitted.record())
    fp32 = InferenceOptions(precision="fp32")
    test = evaluate_checkpoint(checkpoint, fp32, dataset="folder", data_dir=arguments.data_dir, split="test")
    assert test.uncalibrated is not None
    if arguments.report is not None:  # metrics.json, reliability.png, mistakes_cam.png, ... per seed
        write_report(arguments.report / f"seed{seed}", test)
    return {
        "seed": seed,
        "accuracy": test.report["accuracy"],
        "temperature": temperature,
        "ece_before": test.uncalibrated["ece"],
        "ece_after": test.report["calibration"]["ece"],
        "nll_before": test.uncalibrated["nll"],
        "nll_after": test.report["calibration"]["nll"],
        "validation_ece": (before["ece"], after["ece"]),
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
        "| validation ECE before → after | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="visionfit-calibration-") as work:
        for seed in arguments.seeds:
            row = run_seed(seed, arguments, Path(work))
            print(
                f"| {row['seed']} | {row['accuracy']:.2%} | {row['temperature']:.3f} | "
                f"{row['ece_before']:.2%} | {row['ece_after']:.2%} | {row['nll_before']:.4f} | "
                f"{row['nll_after']:.4f} | {row['validation_ece'][0]:.2%} → {row['validation_ece'][1]:.2%} "
                f"| {row['train_seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
