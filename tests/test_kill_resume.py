"""SIGKILL at random moments, resume, repeat: the final state equals an uninterrupted run's.

The CI test kills a short run a few times; the slow test (`pytest -m slow`) kills a longer one
dozens of times and prints the tally that benchmarks/RESULTS.md reports.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_resume import assert_same_run, make_noisy_dataset

KILL_SEED = int(os.environ.get("VISIONFIT_KILL_SEED", "1234"))


def command(data: Path, run_dir: Path, name: str, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "visionfit",
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--test-fraction",
        "0.2",
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--workers",
        "2",
        "--deterministic",
        "--checkpoint-every-steps",
        "1",
        "--log-every",
        "1",
        "--run-dir",
        str(run_dir),
        "--name",
        name,
    ]


def environment() -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[1] / "src")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
    }


def killed_until_done(
    data: Path, run_dir: Path, epochs: int, max_steps_between_kills: int, max_kills: int
) -> dict[str, int]:
    """Start the run, SIGKILL it after a random number of step lines plus a random few
    milliseconds (landing inside checkpoint saves too), resume, and repeat until it finishes."""
    rng = random.Random(KILL_SEED)
    tally = {"kills": 0, "kills_before_training": 0, "kills_during_a_save": 0, "fallbacks": 0}
    first = True
    while True:
        arguments = command(data, run_dir, "killed", epochs)
        if not first:
            arguments = [*arguments[:4], "--resume", str(run_dir / "killed"), "--workers", "2"]
        first = False
        process = subprocess.Popen(
            arguments, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
        )
        if tally["kills"] >= max_kills:
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 0, output
            tally["fallbacks"] += output.count("falling back to the previous checkpoint")
            return tally
        steps_to_wait = rng.randint(0, max_steps_between_kills)
        seen = 0
        output = []
        finished = False
        while seen < steps_to_wait:
            line = process.stdout.readline()
            if not line:
                finished = True
                break
            output.append(line)
            seen += "  step " in line
        if finished:
            process.wait()
            assert process.returncode == 0, "".join(output)
            return tally
        time.sleep(rng.uniform(0, 0.04))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        text = "".join(output)
        tally["fallbacks"] += text.count("falling back to the previous checkpoint")
        tally["kills"] += 1
        tally["kills_before_training"] += steps_to_wait == 0
        checkpoints = run_dir / "killed" / "checkpoints"
        tally["kills_during_a_save"] += bool(list(checkpoints.glob(".*.tmp"))) if checkpoints.exists() else 0


def run_and_compare(
    tmp_path: Path, per_class: int, epochs: int, max_steps: int, max_kills: int
) -> dict[str, int]:
    data = make_noisy_dataset(tmp_path / "data", per_class=per_class)
    reference = subprocess.run(
        command(data, tmp_path, "reference", epochs), capture_output=True, text=True, env=environment()
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    tally = killed_until_done(data, tmp_path, epochs, max_steps, max_kills)
    assert_same_run(tmp_path / "reference", tmp_path / "killed")
    print(f"\nkill tally (seed {KILL_SEED}): {tally}")
    return tally


def test_a_few_random_sigkills_then_bit_identical(tmp_path):
    tally = run_and_compare(tmp_path, per_class=10, epochs=3, max_steps=5, max_kills=3)
    assert tally["kills"] == 3


@pytest.mark.slow
def test_dozens_of_random_sigkills_then_bit_identical(tmp_path):
    # 6 epochs of 18 steps: long enough that 40 kills (about 1.5 steps apart) land before it ends.
    tally = run_and_compare(tmp_path, per_class=30, epochs=6, max_steps=3, max_kills=40)
    assert tally["kills"] == 40
