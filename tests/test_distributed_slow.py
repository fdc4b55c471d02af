"""Long multi-process runs on CPU (gloo), left out by default (`pytest -m slow FILE` runs them).

- one process and two processes, same seed and global batch, on a slice of the real CIFAR-10;
- two "nodes" on one machine (two torchrun invocations, c10d rendezvous on 127.0.0.1);
- a rank killed mid-epoch under `--max-restarts 1`: torchrun restarts, the run resumes and finishes;
- a rank killed without restarts: the job ends at once; a hung rank: it ends after --dist-timeout;
  either way the run resumes with a different number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_folder_dataset
from test_resume import make_noisy_dataset
from visionfit.engine.checkpoint_file import load_checkpoint

pytestmark = pytest.mark.slow
SOURCE = str(Path(__file__).resolve().parents[1] / "src")
CIFAR_FOLDERS = Path("~/.cache/visionfit-dev/cifar10").expanduser()


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # as README says for torchrun --max-restarts
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")])),
    }


def visionfit(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "visionfit", "train", *arguments]


def torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *arguments]


def run(command: list[str], timeout: float = 900) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment(), timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cifar_slice(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """ROOT/train|val/<class>/ of links to the first images of the real CIFAR-10 JPEG folders."""
    if not (CIFAR_FOLDERS / "train").is_dir():
        pytest.skip(f"no CIFAR-10 image folders in {CIFAR_FOLDERS}")
    for split, source, count in (("train", "train", train_per_class), ("val", "test", test_per_class)):
        for class_folder in sorted((CIFAR_FOLDERS / source).iterdir()):
            target = root / split / class_folder.name
            target.mkdir(parents=True)
            for image in sorted(class_folder.iterdir())[:count]:
                (target / image.name).symlink_to(image)
    return root


def predictions(run_dir: Path, data: Path) -> torch.Tensor:
    """The class each test image gets from the run's last checkpoint."""
    from visionfit.data.folder import load_folder
    from visionfit.inference import load_for_inference
    from visionfit.prediction import picture_pixels, stack_pixels

    path = run_dir / "checkpoints" / "last.safetensors"
    model = load_for_inference(path, device="cpu", precision="fp32", flip=False, shift=0)
    _, _, test, _ = load_folder(data, 0.1, 0)
    pixels = stack_pixels([picture_pixels(path, model.preprocess) for path in test.paths])
    return model.probabilities(pixels).argmax(dim=1)


def test_one_and_two_processes_reach_the_same_accuracy_on_real_cifar10(tmp_path):
    data = cifar_slice(tmp_path / "cifar", train_per_class=300, test_per_class=100)
    arguments = [
        "--data-dir", str(data), "--epochs", "4", "--batch-size", "64", "--lr", "0.02",
        "--workers", "0", "--log-every", "0", "--run-dir", str(tmp_path / "runs"),
        "--model", "cifar10-quick",  # named: a bare folder of small pictures now gets the fast recipe
    ]  # fmt: skip
    run(visionfit(*arguments, "--name", "one"))
    run(visionfit(*arguments, "--name", "two", "--nproc", "2"))
    one, two = (history(tmp_path / "runs" / name) for name in ("one", "two"))
    accuracy = [records[-1]["test"]["accuracy"] for records in (one, two)]
    agreement = predictions(tmp_path / "runs" / "one", data) == predictions(tmp_path / "runs" / "two", data)
    agreement_share = float(agreement.float().mean())
    print(
        f"\n1 process: {accuracy[0]:.2%}, 2 processes: {accuracy[1]:.2%}, same class on {agreement_share:.1%}"
    )
    assert one[-1]["test"]["count"] == two[-1]["test"]["count"] == 1000
    assert abs(accuracy[0] - accuracy[1]) <= 0.005
    assert agreement_share >= 0.9
    assert accuracy[0] > 0.25  # it learned something: chance is 10%


def test_two_nodes_on_one_machine(tmp_path):
    """Two torchrun invocations, one process each, meeting through c10d on 127.0.0.1."""
    data = make_folder_dataset(tmp_path / "fruit", per_class=12)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]  # fmt: skip
    training = ["-m", "visionfit", "train", *small_run_arguments(data, tmp_path / "runs", "nodes", epochs=2)]
    nodes = [
        subprocess.Popen(
            torchrun(*common, "--node-rank", str(rank), *training),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment(),
        )
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "2 processes; global batch 8 (4 per process)" in "".join(outputs)
    assert_finished(tmp_path / "runs" / "nodes", 2)
    assert json.loads((tmp_path / "runs" / "nodes" / "run.json").read_text())["processes"] == 2
    run(visionfit(*small_run_arguments(data, tmp_path / "runs", "single", epochs=2)))
    close_weights(tmp_path / "runs" / "single", tmp_path / "runs" / "nodes")


def test_a_killed_rank_is_restarted_and_the_run_resumes(tmp_path):
    """SIGKILL rank 1 mid-epoch under --max-restarts 1: torchrun restarts both processes, they find
    the run again by its --name, resume from the last checkpoint and finish as if never stopped."""
    data = make_noisy_dataset(tmp_path / "data", per_class=12)
    runs = tmp_path / "runs"
    launcher = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    run(torchrun(*launcher, "-m", "visionfit", "train", *small_run_arguments(data, runs, "reference")))
    command = torchrun(*launcher, "-m", "visionfit", "train", *small_run_arguments(data, runs, "killed"))
    process, lines = start_and_wait_for_steps(command, steps=5)  # epoch 2 of 3
    pid = worker_pid(str(runs), rank=1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    code, output = finish(process, lines)
    assert code == 0, output[-5000:]
    assert "torchrun restart 1: resuming" in output and "resuming at epoch 2" in output
    assert_finished(runs / "killed", 3)
    close_weights(runs / "reference", runs / "killed", tolerance=1e-5)


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_lost_rank_ends_the_job_and_it_resumes_with_another_process_count(tmp_path, fault):
    """Without restarts, a killed rank ends the job at once and a hung (stopped) rank ends it after
    --dist-timeout; never a hang. The run then resumes in one process and finishes."""
    data = make_noisy_dataset(tmp_path / "data", per_class=12)
    runs = tmp_path / "runs"
    arguments = [*small_run_arguments(data, runs, "lost", epochs=3), "--dist-timeout", "0.2"]
    process, lines = start_and_wait_for_steps(visionfit(*arguments, "--nproc", "2"), steps=5)
    pid = worker_pid(str(runs), rank=1)
    assert pid is not None
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    try:
        code, output = finish(process, lines, timeout=180)
    finally:
        if fault == "hang" and worker_pid(str(runs), rank=1) is not None:
            os.kill(pid, signal.SIGKILL)
    assert code == 2, output[-5000:]
    assert time.monotonic() - started < 120
    assert "training process rank" in output and "failed" in output
    if fault == "hang":
        assert "another training process stopped answering" in output
    output = run(visionfit("--resume", str(runs / "lost")))
    assert "resuming at epoch 2" in output
    assert_finished(runs / "lost", 3)


def worker_pid(marker: str, rank: int, restart: int = 0) -> int | None:
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
        if (
            f"RANK={rank}".encode() in variables
            and f"TORCHELASTIC_RESTART_COUNT={restart}".encode() in variables
        ):
            return int(entry.name)
    return None


def start_and_wait_for_steps(command: list[str], steps: int) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment()
    )
    lines: list[str] = []
    while sum("  step " in line for line in lines) < steps:
        line = process.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    return process, lines


def finish(process: subprocess.Popen, lines: list[str], timeout: float = 600) -> tuple[int, str]:
    rest, _ = process.communicate(timeout=timeout)
    return process.returncode, "".join(lines) + rest


def small_run_arguments(data: Path, run_dir: Path, name: str, epochs: int = 3) -> list[str]:
    return [
        "--dataset", "folder", "--data-dir", str(data), "--test-fraction", "0.2",
        "--epochs", str(epochs), "--batch-size", "8", "--workers", "0", "--deterministic",
        "--checkpoint-every-steps", "1", "--log-every", "1", "--run-dir", str(run_dir), "--name", name,
    ]  # fmt: skip


def assert_finished(run_dir: Path, epochs: int) -> None:
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert [record["epoch"] for record in history(run_dir)] == list(range(1, epochs + 1))


def close_weights(first: Path, second: Path, tolerance: float = 1e-4) -> None:
    weights = [
        load_checkpoint(path / "checkpoints" / "last.safetensors").model_state for path in (first, second)
    ]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=tolerance, atol=tolerance)
