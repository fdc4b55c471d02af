"""Kill one random rank of a 2-process torchrun run N times at random moments, resume after each
kill, and check that the final weights and training state equal an uninterrupted run's bit for bit.

    PYTHONPATH=src python benchmarks/kill_harness.py --kills 100 [--minutes M] [--seed 1] [--work DIR]

Every attempt is `visionfit train --nproc 2` (torchrun's launcher): it waits for a random number of
step lines (0-3) plus a random few milliseconds, SIGKILLs rank 0 or rank 1, and waits for torchrun
to end the other one; the next attempt is `--resume RUN --nproc 2`. Each kill is classified by what
the run was doing: writing a checkpoint (a temp file of an atomic write was left behind), testing
(after an epoch's last step line, before its summary line), starting up (no step line yet), or
training. Runs on CPU (gloo), `--deterministic`, with a checkpoint after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SOURCE = str(Path(__file__).resolve().parents[1] / "src")


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])),
    }


def make_dataset(root: Path, per_class: int) -> Path:
    """Three overlapping noisy classes of 12x12 PNGs (weights keep moving for many epochs)."""
    import numpy as np
    from PIL import Image

    for label, color in enumerate([(120, 100, 100), (100, 120, 100), (100, 100, 120)]):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng(label * 1000 + index)
            pixels = np.clip(np.array(color) + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def train_arguments(data: Path, runs: Path, name: str, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "visionfit", "train", "--nproc", "2", "--dataset", "folder",
        "--data-dir", str(data), "--test-fraction", "0.2", "--epochs", str(epochs), "--batch-size", "8",
        "--lr", "0.01", "--workers", "0", "--deterministic", "--checkpoint-every-steps", "1",
        "--log-every", "1", "--run-dir", str(runs), "--name", name,
    ]  # fmt: skip


def worker_pid(marker: str, rank: int) -> int | None:
    """The pid of the training process of `rank` whose command line holds `marker` (the run dir)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in variables and b"TORCHELASTIC_RUN_ID" in b" ".join(variables):
            return int(entry.name)
    return None


def phase(output: str, checkpoints: Path, steps_per_epoch: int) -> str:
    """What the run was doing when it was killed, from all it printed and its checkpoint folder."""
    if checkpoints.exists() and list(checkpoints.glob(".*.tmp")):
        return "checkpoint_write"  # an atomic write's temp file was left behind
    if "  step " not in output:
        return "startup"
    last_step, after = output.rsplit("  step ", 1)[1].split(maxsplit=1)[0], output.rsplit("  step ", 1)[1]
    if int(last_step) % steps_per_epoch == 0 and "train loss" not in after:
        return "testing"  # after the epoch's last step, before its summary line
    return "training"


def attempt(command: list[str], runs: Path, rng: random.Random, steps_per_epoch: int) -> tuple[str, str]:
    """One attempt: start, kill a random rank at a random moment; ('finished'|phase, output)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
    )
    lines: list[str] = []
    steps_to_wait = rng.randint(0, 3)
    while sum("  step " in line for line in lines) < steps_to_wait:
        line = process.stdout.readline()
        if not line:
            process.wait()
            return ("finished" if process.returncode == 0 else f"exit {process.returncode}"), "".join(lines)
        lines.append(line)
    time.sleep(rng.uniform(0, 0.05))
    rank = rng.randint(0, 1)
    pid = None
    deadline = time.monotonic() + 900  # a loaded machine can take minutes to start the workers
    while pid is None and time.monotonic() < deadline and process.poll() is None:
        pid = worker_pid(str(runs), rank)
    if pid is None:
        output = process.communicate()[0]
        return ("finished" if process.returncode == 0 else f"exit {process.returncode}"), "".join(
            lines
        ) + output
    os.kill(pid, signal.SIGKILL)
    output = "".join(lines) + process.communicate(timeout=300)[0]
    where = phase(output, runs / "killed" / "checkpoints", steps_per_epoch)
    return where, output


def kill_until_done(
    data: Path, runs: Path, epochs: int, limits: tuple[int, float], rng: random.Random, steps_per_epoch: int
) -> dict[str, int]:
    """Kill, resume, kill ... until `limits` (a number of kills, a monotonic time) is reached, then let
    the run finish; the tally of kills by phase."""
    tally: dict[str, int] = {"kills": 0, "fallbacks": 0}
    while tally["kills"] < limits[0] and time.monotonic() < limits[1]:
        where, output = attempt(next_command(data, runs, epochs), runs, rng, steps_per_epoch)
        attempts = runs.parent / "attempts"  # every attempt's output, to see what each kill hit
        attempts.mkdir(exist_ok=True)
        (attempts / f"{tally['kills'] + 1:03d}-{where}.log").write_text(output)
        tally["fallbacks"] += output.count("falling back to the previous checkpoint")
        if where == "finished":
            return tally
        assert not where.startswith("exit"), output[-3000:]  # it failed before the kill
        tally["kills"] += 1
        tally[where] = tally.get(where, 0) + 1
        print(f"kill {tally['kills']}: {where}", flush=True)
    final = subprocess.run(
        next_command(data, runs, epochs), capture_output=True, text=True, env=environment()
    )
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    tally["fallbacks"] += final.stdout.count("falling back to the previous checkpoint")
    return tally


def next_command(data: Path, runs: Path, epochs: int) -> list[str]:
    """The run's first command line, or a resume once it wrote its config (a kill can land before)."""
    command = train_arguments(data, runs, "killed", epochs)
    if not (runs / "killed" / "config.yaml").is_file():
        return command
    return [*command[:4], "--resume", str(runs / "killed"), "--nproc", "2"]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from visionfit.engine.checkpoint_file import load_checkpoint

    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    return {**checkpoint.model_state, **checkpoint.extra_tensors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="0: enough for the kills")
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=0, help="stop killing after this long (0: never)")
    parser.add_argument("--work", type=Path, default=None, help="a folder to keep (default: a temp one)")
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="kill-harness-"))
    data, runs = make_dataset(work / "data", options.per_class), work / "runs"
    steps_per_epoch = -(-int(options.per_class * 3 * 0.8) // 8)
    # About 4 steps of progress per kill (measured), plus a margin so the last kills still land.
    epochs = options.epochs or max(2, -(-(options.kills * 5 + 4) // steps_per_epoch))
    rng = random.Random(options.seed)
    started = time.monotonic()
    reference = subprocess.run(
        train_arguments(data, runs, "reference", epochs), capture_output=True, text=True, env=environment()
    )
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    reference_seconds = time.monotonic() - started
    stop_at = time.monotonic() + 60 * options.minutes if options.minutes else float("inf")
    tally = kill_until_done(data, runs, epochs, (options.kills, stop_at), rng, steps_per_epoch)
    reference_state, killed_state = final_state(runs / "reference"), final_state(runs / "killed")
    identical = sorted(reference_state) == sorted(killed_state) and all(
        torch.equal(reference_state[name], killed_state[name]) for name in reference_state
    )
    status = json.loads((runs / "killed" / "run.json").read_text())["status"]
    total = time.monotonic() - started
    result = {
        **tally,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "final_status": status,
        "bit_identical": identical,
        "reference_seconds": round(reference_seconds, 1),
        "total_seconds": round(total, 1),
        "seconds_per_kill": round((total - reference_seconds) / max(1, tally["kills"]), 1),
    }
    print(json.dumps(result))
    sys.exit(0 if identical and status == "finished" else 1)


if __name__ == "__main__":
    main()
