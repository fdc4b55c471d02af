"""Photo folders on the CPU: what the frozen-backbone feature cache and low-resolution epochs buy.

    python benchmarks/photo_speed.py cache --model resnet18
    python benchmarks/photo_speed.py cache --model vgg16 --backbone-epochs 1
    python benchmarks/photo_speed.py low-res --model mobilenet_v3_small

`cache`: ImageNet weights cannot be downloaded here, so the backbone is one trained here: MODEL
from scratch on the flower photos (--backbone-epochs), its weights written in torchvision's
pretrained layout (a fresh 1000-way head) and passed with --weights. Then the ants/bees transfer the
tutorial's way, backbone frozen: with the feature cache (the default) and without it
(--no-feature-cache), each epoch's time and the accuracy. The speed does not depend on how good the
backbone is.

`low-res`: MODEL from scratch on the flower photos (`--recipe scratch` unless --recipe), the same
budget twice: --epochs E at full size, and E + L/2 epochs whose first L run at --low-res-size
(about half the compute at 160 of 224).

Data: ~/.cache/visionfit-dev (../shared/data/unpack.sh). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEV = Path("~/.cache/visionfit-dev").expanduser()
FLOWERS, ANTS_BEES = DEV / "flowers-dev", DEV / "hymenoptera_data"


def train(run_dir: Path, name: str, flags: list[str]) -> tuple[list[dict], float]:
    from visionfit.cli import main

    started = time.perf_counter()
    command = [
        "train",
        *flags,
        "--run-dir",
        str(run_dir),
        "--name",
        name,
        "--no-tensorboard",
        "--log-every",
        "0",
    ]
    if main(command) != 0:
        raise SystemExit(f"run {name} failed")
    wall = time.perf_counter() - started
    lines = (run_dir / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], wall


def pretrained_layout(checkpoint: Path, model_name: str, out: Path) -> Path:
    """The trained backbone's weights with a fresh 1000-way head, as torchvision's own files are."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models import get_model

    from visionfit.engine.checkpoint_file import load_checkpoint
    from visionfit.models.heads import find_classifier

    trained = load_checkpoint(checkpoint).model_state
    torch.manual_seed(0)
    layout = get_model(model_name, weights=None, num_classes=1000)
    head = find_classifier(layout, 1000)
    state = layout.state_dict()
    for key, value in trained.items():
        if not key.startswith(head + ".") and key in state and state[key].shape == value.shape:
            state[key] = value
    save_file({key: value.contiguous() for key, value in state.items()}, str(out))
    return out


def row(label: str, records: list[dict], wall: float) -> str:
    epochs = [record["train_seconds"] + record["test_seconds"] for record in records]
    later = sum(epochs[1:]) / max(1, len(epochs) - 1)
    best = max(record["test"]["accuracy"] for record in records if record["test"])
    return f"| {label} | {epochs[0]:.1f} s | {later:.1f} s | {best:.2%} | {wall:.0f} s |"


def cache(arguments: argparse.Namespace, scratch: Path) -> None:
    size = ["--input-size", str(arguments.input_size)]
    backbone_flags = ["--dataset", "folder", "--data-dir", str(FLOWERS), "--model", arguments.model, *size]
    backbone_flags += ["--epochs", str(arguments.backbone_epochs), "--workers", "1"]
    records, wall = train(scratch, "backbone", backbone_flags)
    print(
        f"backbone: {arguments.model} from scratch on the flower photos, {arguments.backbone_epochs} "
        f"epoch(s), {records[-1]['test']['accuracy']:.2%} in {wall:.0f} s"
    )
    weights = pretrained_layout(
        scratch / "backbone" / "checkpoints" / "last.safetensors",
        arguments.model,
        scratch / "backbone.safetensors",
    )
    common = ["--dataset", "folder", "--data-dir", str(ANTS_BEES), "--model", arguments.model, *size]
    common += ["--weights", str(weights), "--freeze", "backbone", "--epochs", str(arguments.epochs)]
    common += ["--workers", "1"]
    print(f"\nants/bees, {arguments.model} backbone frozen, {arguments.epochs} epochs (each: train + test)\n")
    print("| run | first epoch | later epochs (mean) | best test accuracy | whole run |")
    print("|---|---|---|---|---|")
    for label, extra in (
        ("without the cache", ["--no-feature-cache"]),
        ("with the cache", []),
        ("with the cache, second run (cache file)", []),
        (f"with the cache and --feature-views {arguments.views}", ["--feature-views", str(arguments.views)]),
    ):
        records, wall = train(scratch, label.replace(" ", "-").replace(",", ""), [*common, *extra])
        print(row(label, records, wall), flush=True)


def low_res(arguments: argparse.Namespace, scratch: Path) -> None:
    common = ["--dataset", "folder", "--data-dir", str(FLOWERS), "--model", arguments.model, "--workers", "1"]
    common += ["--recipe", arguments.recipe]
    full = arguments.epochs
    low = arguments.low_res_epochs
    print(f"\nflower photos from scratch, {arguments.model} at 224 px, --recipe {arguments.recipe}\n")
    print("| run | epochs | best test accuracy | last test accuracy | training s | whole run |")
    print("|---|---|---|---|---|---|")
    for label, flags in (
        (f"{full} epochs at 224 px", ["--epochs", str(full), "--low-res-epochs", "0"]),
        (
            f"{full + low // 2} epochs, the first {low} at {arguments.low_res_size} px",
            [
                "--epochs",
                str(full + low // 2),
                "--low-res-epochs",
                str(low),
                "--low-res-size",
                str(arguments.low_res_size),
            ],
        ),
    ):
        records, wall = train(scratch, "low-res" if "first" in label else "full", [*common, *flags])
        tested = [record["test"]["accuracy"] for record in records if record["test"]]
        seconds = sum(record["train_seconds"] for record in records)
        accuracy = f"{max(tested):.2%} | {tested[-1]:.2%}"
        print(f"| {label} | {len(records)} | {accuracy} | {seconds:.0f} s | {wall:.0f} s |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("cache", "low-res"))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--backbone-epochs", type=int, default=2)
    parser.add_argument(
        "--epochs", type=int, default=4, help="cache: transfer epochs; low-res: full-size epochs"
    )
    parser.add_argument("--views", type=int, default=2, help="cache: --feature-views of the last row")
    parser.add_argument("--low-res-epochs", type=int, default=6)
    parser.add_argument("--low-res-size", type=int, default=160)
    parser.add_argument("--recipe", default="scratch", help="low-res: both runs' recipe (default: scratch)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["VISIONFIT_CACHE"] = str(Path(folder) / "cache")  # nothing from earlier runs
        (cache if arguments.part == "cache" else low_res)(arguments, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
