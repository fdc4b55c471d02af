"""benchmarks/device_check.sh, the GPU check run whenever a device is lent: its syntax always, and
its CPU dry run (every step, tiny) with the slow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_an_unknown_mode_is_refused():
    result = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=environment, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for step in ("== install", "== CUDA-marked tests", "== fast recipe", "== done"):
        assert step in result.stdout
    assert "epoch   1  train" in result.stdout
