"""Where the time of a `visionfit train` process goes outside its epochs: imports, data, model,
batches, run folder, TensorBoard, end-of-run plots — measured by timing visionfit's own functions
from outside (nothing in visionfit is changed), in a fresh process per run.

    python benchmarks/startup_split.py -- --recipe tutorial --epochs 1 --data-dir DIR
    python benchmarks/startup_split.py -- --dataset folder --data-dir PHOTOS --model resnet18 --epochs 1

With --runs 2 the second run finds the data already seen once (decoded cache, checked files).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

DRIVER = r"""
import json, sys, time
started = time.perf_counter()
timings = {}

def timed(module, name, label):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - begin
    setattr(module, name, wrapper)

import visionfit.cli
import visionfit.training as training
import visionfit.engine.epochs as epochs
import visionfit.engine.events as events
timings["imports"] = time.perf_counter() - started
for name, label in [
    ("load_training_data", "data: load and decode check"),
    ("resolve_preprocess", "preprocessing and checks"),
    ("check_run_setup", "preprocessing and checks"),
    ("build_training_model", "model: build, check, to device"),
    ("create_batches", "batches (memory path: decode or cache)"),
    ("create_optimization", "optimizer"),
    ("run_checkpoints", "run folder, config, status"),
    ("start_run_folder", "run folder, config, status"),
    ("create_run_folder", "run folder, config, status"),
    ("open_events", "TensorBoard writer"),
    ("log_examples", "TensorBoard graph and images"),
    ("finish", "end of run: plots, hparams, status"),
]:
    timed(training, name, label)
timed(epochs, "run_epoch", "epochs (train, test, checkpoint)")
real_main = visionfit.cli.main

def main_then_report():
    code = real_main(["train", *sys.argv[1:]])
    timings["until the command returned"] = time.perf_counter() - started
    print("TIMINGS " + json.dumps(timings))
    return code

visionfit.cli.main = main_then_report
visionfit.cli.run_and_exit()  # as the `visionfit` command ends
"""


def run(flags: list[str], run_dir: str) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *flags, "--run-dir", run_dir, "--log-every", "0"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("TIMINGS "))
    timings = json.loads(line.removeprefix("TIMINGS "))
    timings["wall (process start to exit, as the shell sees it)"] = wall
    records = []
    for path in sorted(__import__("pathlib").Path(run_dir).glob("*/metrics.jsonl")):
        records = [json.loads(text) for text in path.read_text().splitlines()]
    timings["  of which epochs' training steps"] = sum(record["train_seconds"] for record in records)
    timings["  of which epochs' tests"] = sum(record["test_seconds"] for record in records)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh processes in a row (default 2)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then `visionfit train` flags")
    arguments = parser.parse_args()
    flags = arguments.flags[1:] if arguments.flags[:1] == ["--"] else arguments.flags
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(arguments.runs):
            results.append(run(flags, f"{scratch}/runs{number}"))
    labels = list(dict.fromkeys(label for timings in results for label in timings))
    print(f"visionfit train {' '.join(flags)}")
    print(f"{'':52}" + "".join(f"{f'run {number + 1}':>10}" for number in range(len(results))))
    for label in labels:
        print(f"{label:52}" + "".join(f"{timings.get(label, 0.0):9.2f}s" for timings in results))
    for number, timings in enumerate(results, start=1):
        outside = (
            timings["wall (process start to exit, as the shell sees it)"]
            - timings["epochs (train, test, checkpoint)"]
        )
        print(f"run {number}: outside the epochs {outside:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
