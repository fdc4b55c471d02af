"""The `visionfit` command: parse, build a config, call the library.

One module per subcommand (`train`, `models`, `recipes`, `evaluate` for eval, `calibrate`, `predict`,
`explain`, `importing` for import, `export`, `serve`, `doctor`), each with `add_parser` and the `run`
it sets as the parser's handler. Torch (and onnx, FastAPI) are imported only inside the handlers, so
`visionfit --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from visionfit.cli import (
    calibrate,
    doctor,
    evaluate,
    explain,
    export,
    importing,
    models,
    predict,
    recipes,
    serve,
    train,
    tune,
)
from visionfit.errors import TrainingStopped, UserError

SUBCOMMANDS = (
    train,
    tune,
    models,
    recipes,
    evaluate,
    calibrate,
    predict,
    explain,
    importing,
    export,
    serve,
    doctor,
)


def build_parser() -> argparse.ArgumentParser:
    from visionfit import __version__

    parser = argparse.ArgumentParser(
        prog="visionfit",
        description="Train, evaluate and use image classifiers with PyTorch.",
        epilog="Run `visionfit COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"visionfit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.add_parser(commands)
    return parser


def one_line(error: BaseException) -> str:
    """The message of a UserError, also when a DataLoader worker wrapped it in its traceback."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    command_line = list(sys.argv[1:] if argv is None else argv)
    arguments = parser.parse_args(command_line)
    if arguments.command is None:
        parser.print_help()
        return 0
    arguments.command_line = command_line
    try:
        return int(arguments.handler(arguments))
    except UserError as error:
        print(f"visionfit: error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingStopped as error:  # a signal: the position is saved, the status says which signal
        print(f"visionfit: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("visionfit: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if type(error).__name__ == "UserError" or "UserError: " in str(error):
            print(f"visionfit: error: {one_line(error)}", file=sys.stderr)
            return 2
        raise


def run_and_exit() -> None:
    """The `visionfit` command (console script and `python -m visionfit`): `main`, then a fast exit.

    Once a command has finished, tearing the interpreter down module by module takes about a
    second with PyTorch and its compiler loaded (benchmarks/RESULTS.md), on every run. Everything
    visionfit writes is closed and flushed by then, so the process ends at once — unless a child
    process (a DataLoader worker) is still alive, which the normal exit joins, or a profiler or
    tracer (cProfile, coverage) is watching, which writes its results at the normal exit."""
    code = main()
    import multiprocessing

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if not watched and not multiprocessing.active_children():
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
