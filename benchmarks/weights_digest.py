"""Fingerprints of short deterministic training runs: the SHA-256 of each run's final weights and
its last test numbers, so that a refactoring can show it left training bit-identical.

Run it on two commits, same machine, and compare the lines:

    python benchmarks/weights_digest.py > before.txt   # on the old commit
    python benchmarks/weights_digest.py > after.txt    # on the new one
    diff before.txt after.txt

Each run uses the CLI (`visionfit.cli.main`) with --deterministic on the CPU in a temporary folder;
the folder datasets are generated from a fixed seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# Each run's flags (split on spaces); {small} and {large} are the generated folder datasets.
RUNS: dict[str, str] = {
    "fast-recipe, memory path, low-res epoch": "--dataset cifar10-sample --epochs 2 --low-res-epochs 1 "
    "--model-arg width=16",
    "tutorial recipe, memory path": "--recipe tutorial --dataset cifar10-sample --epochs 1",
    "small folder, loader path, pad-crop": "--dataset folder --data-dir {small} --data-path loader "
    "--model cifar10-quick --input-size 32 --epochs 2 --batch-size 8 --workers 0",
    "small folder, memory path": "--dataset folder --data-dir {small} --data-path memory "
    "--model cifar10-quick --input-size 32 --epochs 2 --batch-size 8",
    "large folder at 64 px (memory path), frozen then unfrozen": "--dataset folder --data-dir {large} "
    "--model resnet18 --input-size 64 --freeze backbone --unfreeze-at 2 --backbone-lr-scale 0.1 "
    "--epochs 2 --batch-size 8 --workers 0",
    "large folder at 64 px, frozen then unfrozen, without the feature cache": "--dataset folder "
    "--data-dir {large} --model resnet18 --input-size 64 --freeze backbone --unfreeze-at 2 "
    "--backbone-lr-scale 0.1 --epochs 2 --batch-size 8 --workers 0 --no-feature-cache",
    "large folder at 72 px, loader path, random resized crops": "--dataset folder --data-dir {large} "
    "--model resnet18 --input-size 72 --epochs 2 --batch-size 8 --workers 0",
    "large folder at 72 px, loader path, no augmentation": "--dataset folder --data-dir {large} "
    "--model resnet18 --input-size 72 --epochs 2 --batch-size 8 --workers 0 --no-augment",
    # The four runs of issue 20 (a)-(d): behaviour unchanged through the architecture step.
    "issue 20 (a): --recipe fast, 2 epochs, bundled sample": "--recipe fast --dataset cifar10-sample "
    "--epochs 2 --model-arg width=16",
    "issue 20 (b): frozen resnet18 on a small folder, feature cache": "--dataset folder --data-dir {large} "
    "--model resnet18 --input-size 64 --freeze backbone --epochs 2 --batch-size 8 --workers 0",
    "issue 20 (c): --ema --mixup --cutmix --auto-augment trivialwide": "--dataset folder --data-dir "
    "{small} --model cifar10-quick --input-size 32 --epochs 2 --batch-size 8 --ema 0.9 --mixup 0.2 "
    "--cutmix 1.0 --auto-augment trivialwide",
    "issue 20 (d): 2 gloo processes (torchrun), small folder": "--dataset folder --data-dir {small} "
    "--model cifar10-quick --input-size 32 --epochs 2 --batch-size 8 --workers 0 --nproc 2",
}


def make_folder(root: Path, side: int, per_class: int = 12) -> Path:
    rng = np.random.default_rng(side)
    for label, color in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        for index in range(per_class):
            height = side + int(rng.integers(0, side // 2 + 1))
            pixels = np.clip(np.array(color) + rng.normal(0, 40, (height, side, 3)), 0, 255)
            path = root / f"class{label}" / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def fingerprint(run_dir: Path) -> dict[str, object]:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        if "/" in name:  # training state (optimizer, RNG): not the weights
            continue
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).view(dtype=torch.uint8).numpy())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    test = last["test"]
    return {
        "weights_sha256": digest.hexdigest()[:16],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the runs whose name contains this text")
    arguments = parser.parse_args()
    from visionfit.cli import main as visionfit

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        os.environ["VISIONFIT_CACHE"] = str(folder / "cache")  # decode every run's images afresh
        data = {"small": make_folder(folder / "small", 24), "large": make_folder(folder / "large", 80)}
        for number, (name, flags) in enumerate(RUNS.items()):
            if arguments.only and arguments.only not in name:
                continue
            run_dir = folder / "runs" / str(number)
            common = f"--device cpu --deterministic --seed 3 --no-tensorboard --run-dir {run_dir.parent}"
            command = ["train", *flags.format(**data).split(), *common.split(), "--name", run_dir.name]
            code = visionfit(command)
            result = {"exit": code} if code else fingerprint(run_dir)
            print(json.dumps({"run": name, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
