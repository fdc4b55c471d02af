"""What one training option buys: the same run (data, model, epochs, seed) without the option and
with it, side by side, each run's best and last test accuracy and its time.

    nice python benchmarks/option_comparison.py --data cifar -- --epochs 10
    nice python benchmarks/option_comparison.py --data photos --options baseline,trivialwide,ema -- \\
        --model resnet18 --epochs 8

`--data cifar` is CIFAR-10's dev split (~/.cache/visionfit-dev/cifar10/cifar-10-batches-py: 45,000
train / 5,000 test, the fast recipe); `--data photos` the flower photos from scratch
(~/.cache/visionfit-dev/flowers-dev, train/ and val/); `--data sample` the bundled CIFAR-10 sample
(for a smoke test). Arguments after `--` go to every `visionfit train` run unchanged (the budget:
--epochs, --model, ...). Each run is `visionfit train` in this process, in a temporary run folder;
"train s" sums the epochs' training seconds, "wall s" is the whole run (start-up, tests, plots).
The table is Markdown, ready for benchmarks/RESULTS.md; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DEV = Path("~/.cache/visionfit-dev").expanduser()
DATA = {
    "cifar": ["--dataset", "cifar10", "--data-dir", str(DEV / "cifar10" / "cifar-10-batches-py")],
    "photos": ["--dataset", "folder", "--data-dir", str(DEV / "flowers-dev")],
    "sample": ["--dataset", "cifar10-sample"],
}
# Each option as the flags it adds to the baseline run.
OPTIONS = {
    "baseline": [],
    "trivialwide": ["--auto-augment", "trivialwide"],
    "randaugment": ["--auto-augment", "randaugment"],
    "augmix": ["--auto-augment", "augmix"],
    "random-erasing": ["--random-erasing", "0.25"],
    "mixup": ["--mixup", "0.2"],
    "cutmix": ["--cutmix", "1.0"],
    "mixup+cutmix": ["--mixup", "0.2", "--cutmix", "1.0"],
    "ema": ["--ema", "{ema}"],
}


def run(name: str, flags: list[str], run_dir: Path) -> dict[str, object]:
    """One `visionfit train` run; its accuracy and times from its metrics.jsonl."""
    from visionfit.cli import main as visionfit

    command = ["train", *flags, "--run-dir", str(run_dir), "--name", name, "--log-every", "0"]
    started = time.perf_counter()
    code = visionfit(command)
    wall = time.perf_counter() - started
    if code:
        sys.exit(f"visionfit {' '.join(command)} failed with exit code {code}")
    records = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
    tested = [record["test"]["accuracy"] for record in records if record["test"] is not None]
    train_seconds = sum(record["train_seconds"] for record in records)
    return {
        "best": max(tested),
        "last": tested[-1],
        "train_seconds": train_seconds,
        "epoch_seconds": train_seconds / len(records),
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="cifar")
    parser.add_argument(
        "--options",
        default=",".join(OPTIONS),
        help=f"comma-separated, from {', '.join(OPTIONS)} (default: all)",
    )
    parser.add_argument("--ema", default="0.999", help="the decay of the ema run (default: 0.999)")
    parser.add_argument("extra", nargs="*", help="arguments for every visionfit train run (after --)")
    arguments = parser.parse_args()
    names = arguments.options.split(",")
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        parser.error(f"unknown option {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}"
    )
    common = [*DATA[arguments.data], *arguments.extra]
    print(f"every run: visionfit train {' '.join(common)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="visionfit-options-") as scratch:
        for name in names:
            flags = [flag.format(ema=arguments.ema) for flag in OPTIONS[name]]
            result = run(name.replace("+", "-"), [*common, *flags], Path(scratch))
            rows.append((name, " ".join(flags) or "(none)", result))
            print(f"  {name}: best {result['best']:.2%} in {result['wall']:.0f} s", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}\n")
    print("| option | flags | best test accuracy | last test accuracy | train s | s/epoch | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, flags, result in rows:
        print(
            f"| {name} | `{flags}` | {result['best']:.2%} | {result['last']:.2%} | "
            f"{result['train_seconds']:.0f} | {result['epoch_seconds']:.1f} | {result['wall']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
