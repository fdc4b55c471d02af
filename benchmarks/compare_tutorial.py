"""Run the tutorial baseline and `visionfit train --recipe tutorial` on the same data, one after
the other, and print accuracy and wall time side by side with their ratio.

    python benchmarks/compare_tutorial.py --data-dir ~/.cache/visionfit-dev/cifar10/cifar-10-batches-py

Wall time is measured from launching each process to its exit (imports, data loading and the
last test included). Extra arguments after `--` go to `visionfit train`.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> tuple[float, str]:
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"failed ({completed.returncode}):\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    return seconds, completed.stdout


def run_baseline(data_dir: str, epochs: int) -> dict:
    seconds, output = timed(
        [sys.executable, str(HERE / "tutorial_baseline.py"), "--data-dir", data_dir, "--epochs", str(epochs)]
    )
    result = json.loads(output.split("RESULT ", 1)[1])
    return {
        "name": "tutorial baseline",
        "wall_seconds": seconds,
        "accuracy": result["epochs"][-1]["accuracy"],
        "epoch_seconds": [epoch["train_seconds"] for epoch in result["epochs"]],
    }


def run_visionfit(data_dir: str, epochs: int, extra: list[str]) -> dict:
    run_dir = tempfile.mkdtemp(prefix="visionfit-bench-")
    command = [
        sys.executable,
        "-m",
        "visionfit",
        "train",
        "--recipe",
        "tutorial",
        "--dataset",
        "cifar10",
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--run-dir",
        run_dir,
        "--name",
        "bench",
        *extra,
    ]
    seconds, _ = timed(command)
    lines = Path(run_dir, "bench", "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {
        "name": "visionfit --recipe tutorial " + " ".join(extra),
        "wall_seconds": seconds,
        "accuracy": records[-1]["test"]["accuracy"],
        "epoch_seconds": [record["train_seconds"] for record in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a cifar-10-batches-py folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("extra", nargs="*", help="arguments for visionfit train (after --)")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    results = [] if args.skip_baseline else [run_baseline(args.data_dir, args.epochs)]
    results.append(run_visionfit(args.data_dir, args.epochs, args.extra))
    print("\n| run | test accuracy | wall time | mean train s/epoch |")
    print("|---|---|---|---|")
    for result in results:
        mean_epoch = sum(result["epoch_seconds"]) / len(result["epoch_seconds"])
        print(
            f"| {result['name']} | {result['accuracy']:.2%} | {result['wall_seconds']:.0f} s | "
            f"{mean_epoch:.1f} s |"
        )
    if len(results) == 2:
        baseline, ours = results
        print(
            f"\naccuracy difference: {100 * (ours['accuracy'] - baseline['accuracy']):+.2f} points; "
            f"wall-time ratio baseline/visionfit: {baseline['wall_seconds'] / ours['wall_seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
