"""Faults of long runs on shared machines: a stop signal saves the position and the resumed run is
bit-identical; one writer per run folder; a failing checkpoint write keeps the previous one.

Multi-process cases (torchrun) are in test_preemption_slow.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_kill_resume import environment
from test_resume import assert_same_run, make_noisy_dataset, settings
from visionfit import train
from visionfit.engine import checkpoint_file as checkpoint_module
from visionfit.engine import epochs, run_lock
from visionfit.engine.checkpoint_file import load_checkpoint
from visionfit.engine.run_lock import LOCK_FILE, lock_run_folder
from visionfit.errors import TrainingStopped, UserError

SIGNAL_SEED = int(os.environ.get("VISIONFIT_KILL_SEED", "1234"))


def train_command(data: Path, run_dir: Path, name: str, epochs: int = 3) -> list[str]:
    """A --deterministic run whose only mid-epoch checkpoints are the ones a signal asks for."""
    return [
        sys.executable, "-m", "visionfit", "train", "--dataset", "folder", "--data-dir", str(data),
        "--test-fraction", "0.2", "--epochs", str(epochs), "--batch-size", "4", "--lr", "0.01",
        "--workers", "2", "--deterministic", "--checkpoint-every-steps", "0",
        "--checkpoint-every-minutes", "0", "--log-every", "1", "--run-dir", str(run_dir), "--name", name,
    ]  # fmt: skip


def resume_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "visionfit", "train", "--resume", str(run_dir)]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
    )


def wait_for_steps(process: subprocess.Popen, steps: int) -> list[str]:
    lines: list[str] = []
    while sum("  step " in line for line in lines) < steps:
        line = process.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    return lines


def wait_until_stopped(pid: int) -> None:
    """Until every thread of `pid` is in the stopped state ("T" in /proc/PID/task/*/stat)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        ]
        if all(state in "tT" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within 30 s")


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=600)


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_noisy_dataset(tmp_path_factory.mktemp("noisy") / "data", per_class=10)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    result = run(train_command(data, runs, "reference"))
    assert result.returncode == 0, result.stdout + result.stderr
    return runs / "reference"


@pytest.mark.parametrize("number", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_stop_signal_saves_the_position_and_the_resumed_run_is_bit_identical(
    data, reference, tmp_path, number
):
    rng = random.Random(SIGNAL_SEED + number)
    process = start(train_command(data, tmp_path, "stopped"))
    lines = wait_for_steps(process, rng.randint(1, 12))  # 6 steps an epoch: any epoch, any batch
    time.sleep(rng.uniform(0, 0.05))
    signalled = time.monotonic()
    process.send_signal(number)
    output = "".join(lines) + process.communicate(timeout=60)[0]
    assert time.monotonic() - signalled < 10
    assert process.returncode == 128 + number, output[-3000:]
    assert f"stopped by {signal.Signals(number).name}" in output
    assert status(tmp_path / "stopped") == "interrupted"
    resumed = run(resume_command(tmp_path / "stopped"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at epoch" in resumed.stdout + resumed.stderr
    assert_same_run(reference, tmp_path / "stopped")


@pytest.fixture(scope="module")
def reference_in_process(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(**settings(data, tmp_path_factory.mktemp("in-process"), name="reference")).run_dir


def signal_during(monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    """SIGTERM to this process during the last step of epoch 1 (6 steps an epoch) or its test."""
    if moment == "test":
        real_evaluate = epochs.evaluate

        def evaluating(*arguments: object, **options: object):  # type: ignore[no-untyped-def]
            os.kill(os.getpid(), signal.SIGTERM)
            monkeypatch.setattr(epochs, "evaluate", real_evaluate)
            return real_evaluate(*arguments, **options)

        monkeypatch.setattr(epochs, "evaluate", evaluating)
        return
    real_steps = epochs.train_steps

    def stepping(*arguments: object, **options: object):  # type: ignore[no-untyped-def]
        for number, output in enumerate(real_steps(*arguments, **options), start=1):
            if number == 6:
                os.kill(os.getpid(), signal.SIGTERM)
            yield output

    monkeypatch.setattr(epochs, "train_steps", stepping)


@pytest.mark.parametrize("moment", ["last step", pytest.param("test", marks=pytest.mark.slow)])
def test_a_signal_at_the_end_of_an_epoch_stops_after_it_and_resumes_exactly(
    data, reference_in_process, tmp_path, monkeypatch, moment
):
    options = settings(data, tmp_path, name="stopped", checkpoint_every_steps=0)
    signal_during(monkeypatch, moment)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM") as stopped:
        train(**options)
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is handler  # given back
    monkeypatch.undo()
    assert status(tmp_path / "stopped") == "interrupted"
    train(resume=tmp_path / "stopped")
    assert_same_run(reference_in_process, tmp_path / "stopped")


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    script = (
        "import os, signal, time\n"
        "from visionfit.engine.preemption import STOP\n"
        "STOP.install()\n"
        "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert STOP.number == signal.SIGTERM  # two at once (scheduler + torchrun agent) count once\n"
        "time.sleep(2.2)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment())
    assert result.returncode == 130, result.stderr
    assert "SIGINT again: stopping at once" in result.stderr


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_second_writer_is_refused_and_a_killed_run_leaves_no_stale_lock(data, tmp_path):
    first = start(train_command(data, tmp_path, "busy", epochs=4))
    wait_for_steps(first, 7)  # epoch 1's checkpoint is written
    run_dir = tmp_path / "busy"
    os.kill(first.pid, signal.SIGSTOP)  # frozen, so that any change would be the second one's
    try:
        wait_until_stopped(first.pid)  # the signal lands asynchronously: a flush may still be running
        before = snapshot(run_dir)
        same_config = [*train_command(data, tmp_path, "busy", epochs=4), "--resume", "auto"]
        for command in (resume_command(run_dir), same_config):
            second = run(command)
            message = second.stderr.strip()
            assert second.returncode == 2, second.stdout + second.stderr
            assert len(message.splitlines()) == 1
            assert f"is being written by process {first.pid} on " in message
        assert snapshot(run_dir) == before
        evaluated = run([sys.executable, "-m", "visionfit", "eval", str(run_dir)])
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr  # readers are never blocked
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    resumed = run(resume_command(run_dir))  # at once: the kernel dropped the lock
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert status(run_dir) == "finished"


def test_the_lock_names_its_holder_and_a_file_system_without_locks_only_warns(tmp_path, monkeypatch, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from visionfit.engine.run_lock import lock_run_folder; "
         f"lock = lock_run_folder(__import__('pathlib').Path({str(tmp_path)!r})); print('held', flush=True); "
         "import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=environment(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"process {holder.pid} on .* \(since "):
            lock_run_folder(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with lock_run_folder(tmp_path):  # released by the kernel when the holder died
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()

    def unsupported(*arguments: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "lockf", unsupported)
    lock_run_folder(tmp_path).release()
    assert "cannot lock files" in caplog.text


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_the_run_resumes(
    data, reference_in_process, tmp_path, monkeypatch
):
    real_save = checkpoint_module.save_file
    saved_steps: list[int] = []

    def disk_fills_up(tensors: dict, path: str, metadata: dict) -> None:
        real_save(tensors, path, metadata=metadata)  # half a file or all of it: the temp file
        if ".last.safetensors." not in path:
            return
        if len(saved_steps) == 7:  # mid-epoch 2
            raise OSError(errno.ENOSPC, "No space left on device")
        saved_steps.append(json.loads(metadata["visionfit"])["step"])

    monkeypatch.setattr(checkpoint_module, "save_file", disk_fills_up)
    with pytest.raises(UserError, match="No space left on device; the previous checkpoint is kept") as error:
        train(**settings(data, tmp_path, name="full"))
    assert "\n" not in str(error.value)
    last = tmp_path / "full" / "checkpoints" / "last.safetensors"
    assert load_checkpoint(last).metadata["step"] == saved_steps[-1] == 7  # the one before, intact
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint_module, "save_file", real_save)  # space is back
    train(resume=tmp_path / "full")
    assert_same_run(reference_in_process, tmp_path / "full")
