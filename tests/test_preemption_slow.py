"""Stop signals and a dead agent under torchrun (2 CPU processes, gloo), left out by default
(`pytest -m slow FILE` runs them): every rank stops at the same step, the resumed run is
bit-identical to an uninterrupted one, and no worker outlives a SIGKILLed agent.
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

from test_distributed_slow import environment, worker_pid
from test_preemption import status, wait_for_steps
from test_resume import assert_same_run, make_noisy_dataset

pytestmark = pytest.mark.slow
SIGNAL_SEED = int(os.environ.get("VISIONFIT_KILL_SEED", "1234"))


def two_processes(data: Path, runs: Path, name: str) -> list[str]:
    return [
        sys.executable, "-m", "visionfit", "train", "--nproc", "2", "--dataset", "folder",
        "--data-dir", str(data), "--test-fraction", "0.2", "--epochs", "6", "--batch-size", "8",
        "--lr", "0.01", "--workers", "0", "--deterministic", "--checkpoint-every-steps", "0",
        "--checkpoint-every-minutes", "0", "--log-every", "1", "--run-dir", str(runs), "--name", name,
    ]  # fmt: skip


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "visionfit", "train", "--resume", str(run_dir), "--nproc", "2"]
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=600)


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_noisy_dataset(tmp_path_factory.mktemp("noisy") / "data", per_class=12)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    result = subprocess.run(two_processes(data, runs, "reference"), capture_output=True, text=True,
                            env=environment(), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return runs / "reference"


@pytest.mark.parametrize("target", ["agent", "rank 1"])
def test_sigterm_stops_every_rank_at_one_step_and_the_resumed_run_is_bit_identical(
    data, reference, tmp_path, target
):
    """SIGTERM to torchrun's agent (as Kubernetes sends it to the container's first process) or to
    one worker only: both ranks save at the same step and stop with 143."""
    rng = random.Random(SIGNAL_SEED + len(target))
    process = start(two_processes(data, tmp_path, "stopped"))
    steps = rng.randint(1, 8)  # of 24 (4 an epoch): the signal lands with most of the run ahead
    lines = wait_for_steps(process, 1)
    # Found before the chosen step: scanning /proc on a loaded machine can take longer than the
    # steps that are left.
    pid = process.pid if target == "agent" else worker_pid(str(tmp_path), rank=1)
    assert pid is not None
    lines += wait_for_steps(process, steps - 1)
    time.sleep(rng.uniform(0, 0.05))
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert time.monotonic() - signalled < 10, output[-3000:]
    assert process.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in output
    assert status(tmp_path / "stopped") == "interrupted"
    resumed = resume(tmp_path / "stopped")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_run(reference, tmp_path / "stopped")


def test_no_worker_outlives_a_killed_agent_and_the_run_resumes_exactly(data, reference, tmp_path):
    process = start(two_processes(data, tmp_path, "orphaned"))
    lines = wait_for_steps(process, 5)
    workers = [worker_pid(str(tmp_path), rank) for rank in (0, 1)]
    assert None not in workers, "".join(lines)
    process.kill()  # SIGKILL to the agent: its workers are in sessions of their own
    process.communicate()
    time.sleep(10)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and b"Z" not in status_of(pid)]
    assert alive == []
    resumed = resume(tmp_path / "orphaned")  # at once: the lock went with rank 0
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_run(reference, tmp_path / "orphaned")


def status_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"
