"""Transfer learning on the tutorial's ants and bees: resnet18 and vgg16 from scratch, and with a
frozen backbone started from ImageNet weights when a local copy of them exists.

    nice python benchmarks/transfer_ants_bees.py --data-dir ~/.cache/visionfit-dev/hymenoptera_data

Pretrained weights are looked for in torchvision's cache (TORCH_HOME, `hub/checkpoints/`, where
`visionfit train --pretrained` puts them) and in `--weights-dir`; nothing is downloaded. Without
them only the from-scratch runs happen, and the table says so. Each run is `visionfit.train` with
the model's own preprocessing (224x224, ImageNet mean/std); accuracy is the best epoch's on `val/`,
time the mean training seconds per epoch (evaluation excluded).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from torchvision.models import get_model_weights

import visionfit

MODELS = ("resnet18", "vgg16")


def local_weights(name: str, weights_dir: Path | None) -> Path | None:
    """A local copy of `name`'s torchvision ImageNet weights, if there is one."""
    file_name = Path(get_model_weights(name).DEFAULT.url).name
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / file_name]
    if weights_dir is not None:
        candidates.append(weights_dir / file_name)
    return next((path for path in candidates if path.is_file()), None)


def run(name: str, data_dir: Path, epochs: int, run_dir: Path, **options: object) -> dict[str, object]:
    result = visionfit.train(
        dataset="folder",
        data_dir=str(data_dir),
        model=name,
        epochs=epochs,
        batch_size=16,
        lr=0.01 if options.get("freeze") else 0.005,
        run_dir=str(run_dir),
        tensorboard=False,
        **options,
    )
    seconds = [record["train_seconds"] for record in result.history]
    return {"accuracy": result.best["test"]["accuracy"], "seconds": statistics.mean(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/visionfit-dev/hymenoptera_data"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    arguments = parser.parse_args()
    data_dir = arguments.data_dir.expanduser()
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for name in arguments.models:
            rows.append((name, "from scratch", run(name, data_dir, arguments.epochs, Path(temporary))))
            weights = local_weights(name, arguments.weights_dir)
            if weights is None:
                rows.append((name, "frozen pretrained backbone", None))
                continue
            frozen = run(
                name, data_dir, arguments.epochs, Path(temporary), weights=str(weights), freeze="backbone"
            )
            rows.append((name, f"frozen backbone from {weights.name}", frozen))
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"{arguments.epochs} epochs, batch 16, SGD momentum 0.9, cosine schedule, data: {data_dir}\n")
    print("| model | start | best val accuracy | mean train s/epoch |\n|---|---|---|---|")
    for name, start, result in rows:
        if result is None:
            print(f"| {name} | {start} | not run: no local ImageNet weights (offline) | |")
        else:
            print(f"| {name} | {start} | {result['accuracy']:.2%} | {result['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
