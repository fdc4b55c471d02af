"""`visionfit serve` on the command line: the options reach the app, a checkpoint that names code is
refused unless trusted, the network warning, the missing extra, and a --help that imports no web
framework. uvicorn itself is replaced by a stand-in that records what it was asked to run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

import visionfit
from serve_support import SOURCE, custom_checkpoint, write_checkpoint
from visionfit.cli import main
from visionfit.serve import server


@pytest.fixture
def started(monkeypatch):
    """What `run_server` was called with, instead of serving."""
    calls = []
    monkeypatch.setattr(server, "run_server", lambda app, **options: calls.append((app, options)))
    return calls


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("serve-cli") / "model.safetensors")


def test_options_reach_the_service(checkpoint, started, monkeypatch, capsys):
    monkeypatch.setenv("VISIONFIT_API_KEY", "from-the-environment")
    arguments = ["serve", str(checkpoint), "--port", "8123", "--max-body-mb", "2", "--max-files", "5"]
    arguments += [
        "--max-batch",
        "7",
        "--max-wait-ms",
        "1.5",
        "--max-queue",
        "9",
        "--cors-origin",
        "https://a.example",
    ]
    assert main([*arguments, "--precision", "fp32", "--no-test-time-flip"]) == 0
    ((app, options),) = started
    assert options == {"host": "127.0.0.1", "port": 8123, "access_log": False}
    service = app.app.state.service
    assert service.api_key == "from-the-environment"
    limits = service.limits
    assert (limits.max_body_bytes, limits.max_files, limits.max_batch) == (2 * 1024 * 1024, 5, 7)
    assert (limits.max_wait_ms, limits.max_queue) == (1.5, 9)
    assert service.model.runtime.precision == "fp32" and service.model.flip is False
    error = capsys.readouterr().err
    assert "reachable from the network" not in error and "http://127.0.0.1:8123/" in error
    assert main(["serve", str(checkpoint), "--api-key", "given"]) == 0
    assert started[-1][0].app.state.service.api_key == "given"  # the flag wins over the variable


def test_any_host_but_loopback_is_warned_about_in_one_line(checkpoint, started, capsys):
    assert main(["serve", str(checkpoint), "--host", "0.0.0.0"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "reachable from the network" in warnings[0]
    assert server.network_warning("::1") is None and server.network_warning("localhost") is None


def test_a_checkpoint_that_names_code_is_refused_unless_trusted(tmp_path, started, capsys):
    path = custom_checkpoint(tmp_path)
    assert main(["serve", str(path)]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("visionfit: error: ")
        and "--trust-model-code" in error
        and len(error.splitlines()) == 1
    )
    assert started == []
    assert main(["serve", str(path), "--trust-model-code"]) == 0
    assert len(started) == 1


def test_without_the_serve_extra_it_says_what_to_install(checkpoint, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "uvicorn" else real_find_spec(name, *rest),
    )
    assert main(["serve", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == 'visionfit: error: visionfit serve needs uvicorn: pip install "visionfit[serve]"'


def test_help_imports_no_web_framework():
    code = (
        "import sys; from visionfit.cli import build_parser; build_parser().format_help(); "
        "print(sorted({'fastapi', 'uvicorn', 'starlette', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SOURCE}, check=True
    )
    assert result.stdout.strip() == "[]"
    assert visionfit.__version__
