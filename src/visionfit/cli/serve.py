"""`visionfit serve MODEL`: an HTTP prediction service and a page to try the model (the work is in
`visionfit.serve`; FastAPI and uvicorn come with the `serve` extra and are imported only here)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from visionfit.cli.arguments import (
    add_runtime_options,
    add_test_time_options,
    add_trust_option,
    inference_options,
    port,
    positive,
)
from visionfit.errors import UserError

API_KEY_VARIABLE = "VISIONFIT_API_KEY"
SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds, got {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1000, got {value:g}")
    return value


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model over HTTP, with a page to try it",
        description="Serve a checkpoint, run folder or ONNX export over HTTP: POST /predict (images as "
        "multipart files or one image as the body; the answer is predict --json's), GET /info, "
        "GET /health, API docs at /docs, and a page to try the model at /. Needs the serve extra: "
        'pip install "visionfit[serve]".',
    )
    parser.add_argument("model", metavar="CHECKPOINT|RUN_DIR|model.onnx")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the service "
        "to the network)",
    )
    parser.add_argument("--port", type=port, default=8000, help="(default: 8000)")
    add_runtime_options(parser)
    add_test_time_options(parser)
    add_trust_option(
        parser,
        help="serve a checkpoint of your own model file (path.py:Class), which loading runs; without it "
        "such a checkpoint is refused (serve an ONNX export of it instead: it runs no Python code)",
    )
    _add_limits(parser.add_argument_group("limits (each bounds memory or work)"))
    _add_access(parser.add_argument_group("access"))
    parser.set_defaults(handler=run)


def _add_limits(limits: Any) -> None:
    limits.add_argument(
        "--max-body-mb", type=positive, default=16, metavar="MB", help="largest request body (default: 16)"
    )
    limits.add_argument(
        "--max-files", type=positive, default=32, metavar="N", help="images per request (default: 32)"
    )
    limits.add_argument(
        "--max-batch", type=positive, default=64, metavar="N", help="images per model batch (default: 64)"
    )
    limits.add_argument(
        "--max-wait-ms",
        type=_milliseconds,
        metavar="MS",
        default=3.0,
        help="how long an image waits for others to share its model batch (default: 3)",
    )
    limits.add_argument(
        "--max-queue",
        type=positive,
        metavar="N",
        default=64,
        help="requests served at once; more are answered 503 with Retry-After (default: 64)",
    )


def _add_access(access: Any) -> None:
    access.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require Authorization: Bearer KEY on /predict and /info (or set {API_KEY_VARIABLE}, "
        "which other users of the machine cannot read from the process list)",
    )
    access.add_argument(
        "--cors-origin",
        metavar="ORIGIN",
        action="append",
        default=[],
        help="let pages from ORIGIN (like https://example.org) call the API; repeatable (default: none)",
    )
    access.add_argument("--access-log", action="store_true", help="log one line per request")


def _check_extra() -> None:
    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f'visionfit serve needs {", ".join(missing)}: pip install "visionfit[serve]"')


def run(arguments: argparse.Namespace) -> int:
    _check_extra()
    from visionfit.inference import load_for_inference
    from visionfit.serve.app import create_app
    from visionfit.serve.limits import MEGABYTE, ServeLimits
    from visionfit.serve.server import network_warning, run_server

    api_key = arguments.api_key if arguments.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key must not be empty")
    # A service runs no checkpoint's code unless told to.
    model = load_for_inference(arguments.model, inference_options(arguments, untrusted_code="refuse"))
    limits = ServeLimits(
        max_body_bytes=arguments.max_body_mb * MEGABYTE,
        max_files=arguments.max_files,
        max_batch=arguments.max_batch,
        max_wait_ms=arguments.max_wait_ms,
        max_queue=arguments.max_queue,
    )
    app = create_app(model, limits, api_key=api_key, cors_origins=tuple(arguments.cors_origin))
    warning = network_warning(arguments.host)
    if warning:
        print(warning, file=sys.stderr)
    shown_host = f"[{arguments.host}]" if ":" in arguments.host else arguments.host
    print(
        f"visionfit: serving {model.source} ({len(model.classes)} classes) at "
        f"http://{shown_host}:{arguments.port}/ (Ctrl-C to stop)",
        file=sys.stderr,
    )
    run_server(app, host=arguments.host, port=arguments.port, access_log=arguments.access_log)
    return 0
