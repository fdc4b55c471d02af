"""One writer per run folder: an exclusive kernel lock on `RUN/.lock`, held while a run trains.

A second `train` on the same folder (`--resume RUN`, `--resume auto`, a restarted job script) is
refused in one line naming the holder, before it reads or writes anything there. The lock is
advisory and lives in the kernel: it disappears with the process that holds it, however that
process ends (SIGKILL, the OOM killer), so a crashed run never leaves a stale lock behind. Readers
(eval, predict, export, TensorBoard) never take it and are never blocked.

It is a POSIX record lock (`fcntl.lockf`), not `flock`, on purpose: a DataLoader worker forked by
the run inherits `flock` locks and would keep the folder locked for the seconds it takes to notice
that its parent was killed; POSIX locks belong to the process alone. Under torchrun, rank 0 holds
it for the whole group.

On network file systems the lock is as good as the server's locking: NFSv4 (and NFSv3 with lockd)
honour it across machines; where locking is missing (`ENOLCK`, `EOPNOTSUPP`: some NFS mounts with
`nolock`, FUSE or SMB shares) the run goes ahead with a warning, and keeping to one writer is the
user's job again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from visionfit.console import logger
from visionfit.distributed import broadcast_from_main
from visionfit.errors import UserError

LOCK_FILE = ".lock"
# What a file system without working locks answers (the run then goes ahead, with a warning).
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLock:
    """The held lock of one run folder; `release()` (or the process's end) lets the next writer in."""

    def __init__(self, folder: Path, descriptor: int | None) -> None:
        self.folder = folder
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the file drops the lock
            self.descriptor = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_of(folder: Path) -> dict[str, object]:
    """Who holds (or last held) the lock of `folder`, as it wrote itself into the lock file."""
    try:
        return dict(json.loads((folder / LOCK_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def lock_run_folder(folder: Path) -> RunLock:
    """Take `folder`'s writer lock, or raise a one-line UserError naming the process that has it.

    The refused caller changes nothing: opening an existing lock file does not modify it."""
    path = folder / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"cannot open {path}: {error.strerror}; is the run folder writable?") from None
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            raise UserError(refusal(folder)) from None
        if error.errno in _NO_LOCKING:
            logger.warning(
                f"warning: the file system of {folder} cannot lock files ({error.strerror}); nothing "
                "stops a second run from writing this folder: start one at a time"
            )
            return RunLock(folder, None)
        raise
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
    return RunLock(folder, descriptor)


def lock_for_run(folder: Path) -> RunLock:
    """The writer lock of `folder` for the whole job: rank 0 takes it (the only rank that writes the
    folder); a refusal is raised on every rank. Other ranks get an empty `RunLock`."""
    held: list[RunLock] = []
    broadcast_from_main(lambda: held.append(lock_run_folder(folder)))
    return held[0] if held else RunLock(folder, None)


def refusal(folder: Path) -> str:
    """The one line a second writer gets."""
    holder = holder_of(folder)
    who = (
        f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
        if holder
        else "another process"
    )
    return (
        f"run {folder} is being written by {who}; wait for it to end or stop it first "
        "(one run per folder; eval, predict and export may read it meanwhile)"
    )
