"""Time to accuracy: run `visionfit train` once and log the wall time (from launching the process)
at which each epoch's test accuracy was printed, plus the process's peak memory.

    python benchmarks/time_to_accuracy.py --recipe fast -- \\
        --dataset cifar10 --data-dir ~/.cache/visionfit-dev/cifar10/cifar-10-batches-py

Arguments after `--` go to `visionfit train` unchanged. `--target 85 --target 90` prints when
each accuracy was first reached. The table is Markdown, ready for benchmarks/RESULTS.md.
"""

import argparse
import collections
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+)\s+train loss ([\d.]+)\s+test loss ([\d.]+)\s+test acc ([\d.]+)%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--target", type=float, action="append", default=[], help="accuracy in percent")
    parser.add_argument("extra", nargs="*", help="arguments for visionfit train (after --)")
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="visionfit-tta-")
    command = [
        sys.executable,
        "-m",
        "visionfit",
        "train",
        "--recipe",
        args.recipe,
        "--run-dir",
        run_dir,
        "--name",
        "tta",
        "--log-every",
        "0",
        *args.extra,
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}"
    )
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = []
    tail: collections.deque[str] = collections.deque(maxlen=20)
    assert process.stdout is not None
    for line in process.stdout:
        tail.append(line)
        match = EPOCH_LINE.search(line)
        if match:
            epoch, epochs, train_loss, _test_loss, accuracy = match.groups()
            rows.append((int(epoch), float(accuracy), time.perf_counter() - started, float(train_loss)))
            print(f"  epoch {epoch}/{epochs}: {accuracy}% at {rows[-1][2]:.0f} s", flush=True)
    process.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"{''.join(tail)}visionfit train failed with exit code {process.returncode}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux
    print(
        f"\nload average at end {os.getloadavg()[0]:.2f}; wall time {wall:.0f} s; "
        f"peak memory {peak_gib:.2f} GiB"
    )
    print("\n| epoch | test accuracy | wall time (s) | train loss |")
    print("|---|---|---|---|")
    for epoch, accuracy, seconds, train_loss in rows:
        print(f"| {epoch} | {accuracy:.2f}% | {seconds:.0f} | {train_loss:.4f} |")
    for target in args.target:
        reached = next((row for row in rows if row[1] >= target), None)
        where = f"epoch {reached[0]}, {reached[2]:.0f} s" if reached else "not reached"
        print(f"{target:g}%: {where}")


if __name__ == "__main__":
    main()
