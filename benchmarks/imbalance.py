"""Unbalanced classes on real photos: --class-weights auto and --sampler balanced against plain
training, side by side, the same seeds.

    python benchmarks/imbalance.py                 # 3 seeds, 3 settings
    python benchmarks/imbalance.py --seeds 0 --epochs 2

The data: the flower photos (~/.cache/visionfit-dev/flowers-dev, ../shared/data/unpack.sh) with two
classes (roses, tulips) cut to a tenth of their training images (16 of 160; links, no copies), the
other three whole. Each run (cifar10-quick at 32 px, --epochs, default 4: sized for a shared
two-core machine) holds 0.2 of each class of train out for validation (--val-fraction, best chosen
on its balanced accuracy) and is tested once at the end on the photos' untouched val/ folder (40 of
each class, so there balanced accuracy equals accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

FLOWERS = Path("~/.cache/visionfit-dev/flowers-dev").expanduser()
CUT = {"roses": 16, "tulips": 16}  # a tenth of 160
SETTINGS = {
    "plain": [],
    "class-weights auto": ["--class-weights", "auto"],
    "sampler balanced": ["--sampler", "balanced"],
}


def cut_down(root: Path) -> Path:
    """ROOT/train (two classes cut to a tenth) and ROOT/val (as it was), as symbolic links."""
    for split in ("train", "val"):
        for folder in sorted((FLOWERS / split).iterdir()):
            files = sorted(folder.iterdir())
            if split == "train" and folder.name in CUT:
                files = files[: CUT[folder.name]]
            (root / split / folder.name).mkdir(parents=True)
            for file in files:
                os.symlink(file, root / split / folder.name / file.name)
    return root


def run(data: Path, runs: Path, name: str, flags: list[str], seed: int, epochs: int) -> dict:
    from visionfit.cli import main

    command = [
        "train", "--data-dir", str(data), "--model", "cifar10-quick", "--input-size", "32",
        "--epochs", str(epochs), "--seed", str(seed), "--val-fraction", "0.2",
        "--best-metric", "balanced_accuracy", "--run-dir", str(runs), "--name", name,
        "--no-tensorboard", "--log-every", "0", *flags,
    ]  # fmt: skip
    if main(command) != 0:
        raise SystemExit(f"run {name} failed")
    return json.loads((runs / name / "run.json").read_text())["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = cut_down(Path(folder) / "flowers-cut")
        results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for seed in arguments.seeds:
            for name, flags in SETTINGS.items():
                tested = run(data, Path(folder) / "runs", f"{name}-{seed}".replace(" ", "-"), flags, seed,
                             arguments.epochs)  # fmt: skip
                results[name].append(tested)
                print(json.dumps({"setting": name, "seed": seed, **tested}), flush=True)
    print(f"\n| setting | test balanced accuracy (seeds {', '.join(map(str, arguments.seeds))}) | mean | "
          "test accuracy mean |")  # fmt: skip
    print("|---|---|---|---|")
    for name, tested in results.items():
        balanced = [result["balanced_accuracy"] for result in tested]
        accuracy = statistics.mean(result["accuracy"] for result in tested)
        shown = " / ".join(f"{value:.1%}" for value in balanced)
        print(f"| {name} | {shown} | {statistics.mean(balanced):.1%} | {accuracy:.1%} |")


if __name__ == "__main__":
    main()
