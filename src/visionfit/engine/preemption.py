"""Stopping a run when asked to: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 save the work, and a torchrun
worker whose agent died stops at once.

Schedulers stop jobs with a signal and a grace period: SLURM sends SIGTERM (or SIGUSR1 ahead of the
time limit with `--signal=USR1@90`) and SIGKILL after `KillWait`; Kubernetes sends SIGTERM and
SIGKILL after `terminationGracePeriodSeconds` (30 s by default). The handler only notes the signal;
after the current step every rank asks the others (one collective, `agreed_signal`), so the signal
reaching any rank stops all of them at the same step. The epoch loop then writes `last` with the
mid-epoch position and raises `TrainingStopped`, which the CLI turns into the exit status 128 +
the signal's number (`EXIT_CODES`), as shells report a process ended by that signal.

A second signal ends the process at once, without saving. Signals that arrive together (a job
scheduler that signals every process while torchrun's agent forwards the same signal) count once:
the second must come `REPEAT_AFTER_SECONDS` after the first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from visionfit.distributed import max_across
from visionfit.errors import TrainingStopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_CODES = {number: 128 + number for number in STOP_SIGNALS}  # SIGTERM 143, SIGINT 130, SIGUSR1 138
REPEAT_AFTER_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class StopSignals:
    """The stop signals this process received while `installed` (the process's own, so one object)."""

    def __init__(self) -> None:
        self.number = 0  # the first stop signal received; 0: none
        self.received_at = 0.0
        self.owner = 0  # the pid that installed the handlers (forked data workers inherit them)
        self.previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Catch the stop signals (from the main thread only, where Python allows it)."""
        if threading.current_thread() is not threading.main_thread() or self.previous:
            return False
        self.number, self.owner = 0, os.getpid()
        for number in STOP_SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return True

    def restore(self) -> None:
        """Give the signals back to whatever handled them before `install`."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:  # a forked DataLoader worker: the main process decides
            return
        now = time.monotonic()
        if not self.number:
            self.number, self.received_at = number, now
        elif now - self.received_at >= REPEAT_AFTER_SECONDS:
            sys.stderr.write(f"visionfit: {signal.Signals(number).name} again: stopping at once, unsaved\n")
            sys.stderr.flush()
            os._exit(EXIT_CODES.get(number, 128 + number))

    def agreed_signal(self) -> int:
        """The stop signal any rank received (the highest number when several did), 0 for none; every
        rank gets the same answer. One all-reduce per call under torchrun, nothing otherwise."""
        return max_across(self.number)


STOP = StopSignals()


def stopped(number: int, saved: str, run_dir: Path) -> TrainingStopped:
    """The exception that ends a run stopped by signal `number`, `saved` saying what was saved."""
    name = signal.Signals(number).name
    code = EXIT_CODES.get(number, 128 + number)
    message = f"stopped by {name}: {saved}; continue with `visionfit train --resume {run_dir}`"
    return TrainingStopped(message, code)


@contextmanager
def catching_stop_signals() -> Iterator[StopSignals]:
    """SIGTERM, SIGINT and SIGUSR1 noted by `STOP` for the loop to act on, inside the block only."""
    STOP.install()
    try:
        yield STOP
    finally:
        STOP.restore()


def stop_with_parent() -> bool:
    """In a torchrun worker on Linux: have the kernel SIGKILL this process when its parent (the agent)
    dies, so that workers never outlive it (torchrun starts them in sessions of their own, so the
    agent's death alone reaches none of them). SIGKILL, not a signal to save on: with the agent gone
    nobody coordinates the other workers, and checkpoints are written atomically, so the last good
    one stays. True when the request was made."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the agent died before the request: nobody would send the signal
        os.kill(os.getpid(), signal.SIGKILL)
    return True
