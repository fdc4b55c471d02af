"""`visionfit train --nproc N`: start N training processes on this machine through torchrun's own
launcher, so that users need no second tool for the common case."""

from __future__ import annotations

import os
from collections.abc import Sequence

from visionfit.distributed import SHARE_STORE_VARIABLE
from visionfit.errors import TrainingStopped, UserError

# The signals torchrun's agent forwards to the training processes (waiting 30 s for them to save
# and stop): its own list plus SIGUSR1, SLURM's usual warning ahead of the time limit.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# Exit statuses of a training process stopped by a signal after saving (engine.preemption).
STOPPED_CODES = {143: "SIGTERM", 130: "SIGINT", 138: "SIGUSR1"}


def strip_nproc(arguments: Sequence[str]) -> list[str]:
    """The command line without its `--nproc N` (or `--nproc=N`): what each launched process runs."""
    kept: list[str] = []
    skip_next = False
    for argument in arguments:
        if skip_next:
            skip_next = False
        elif argument == "--nproc":
            skip_next = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept


def torchrun_arguments(nproc: int, train_arguments: Sequence[str]) -> list[str]:
    """torchrun's command line for `nproc` processes on this machine running `visionfit train`.

    `--standalone` makes torchrun pick a free local port for the rendezvous, so two jobs on one
    machine do not collide.
    """
    return ["--standalone", "--nproc-per-node", str(nproc), "-m", "visionfit", "train", *train_arguments]


def launch(nproc: int, train_arguments: Sequence[str]) -> int:
    """Run `visionfit train` in `nproc` processes on this machine through torchrun's launcher and
    return the job's exit status. A failed process ends the others; its own error is above."""
    if "RANK" in os.environ:
        raise UserError("--nproc starts torchrun for you; under torchrun (RANK is set) leave it out")
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    saved = dict(os.environ)  # torchrun reads its settings from the environment; restore it after
    os.environ.setdefault(SHARE_STORE_VARIABLE, "1")  # a fresh store for each restart (distributed)
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of each process taking all
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    try:
        run(parse_args(torchrun_arguments(nproc, train_arguments)))
    except SignalException as error:  # forwarded to the processes, which saved and stopped
        code = 128 + int(error.sigval)
        raise TrainingStopped(f"stopped by {error.sigval.name}; continue with `--resume`", code) from None
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode in STOPPED_CODES:
            name = STOPPED_CODES[failure.exitcode]
            raise TrainingStopped(f"stopped by {name}; continue with `--resume`", failure.exitcode) from None
        raise UserError(
            f"training process rank {rank} failed (exit code {failure.exitcode}; its messages are "
            "above), so the job was stopped"
        ) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0
