"""Several processes, GPUs or machines: torchrun's environment, the process group, the few
collectives training needs (the `--nproc N` launcher is in `launch`).

One process per device, started by `torchrun` (or by `visionfit train --nproc N`, which calls
torchrun's own launcher). Every process runs the same `train(config)`; they differ only in their
rank. The sampler hands each rank its share of every *global* batch, DDP averages the gradients,
evaluation sums are added up across ranks, and only rank 0 touches the run folder.

Nothing here does anything in a single process: every helper returns at once when the world has
one process, so the one-process path stays exactly what it was.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from visionfit.console import logger
from visionfit.errors import UserError

T = TypeVar("T")


# torchrun keeps the addresses of a failed attempt's processes in the store it shares with the
# next attempt, whose processes then connect to dead ports (pytorch/pytorch#135712, #167288).
SHARE_STORE_VARIABLE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
SHARED_STORE_HINT = (
    "the processes restarted by torchrun could not connect to each other; for torchrun "
    f"--max-restarts set {SHARE_STORE_VARIABLE}=1 in torchrun's environment (`visionfit train "
    "--nproc` does)"
)


def process_layout() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)"
        ) from None
    return rank, world_size, local_rank


def joined_layout() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process once it joined the process group; a process
    that did not join one (a single process, or a library call outside torchrun) is (0, 1, 0)."""
    if not dist.is_initialized():
        return 0, 1, 0
    return dist.get_rank(), dist.get_world_size(), process_layout()[2]


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes the run folder and prints."""
    return joined_layout()[0] == 0


def _several() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def local_world_size() -> int:
    """How many processes of this job share this machine (its cores and its data loaders)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def restart_count() -> int:
    """How many times torchrun restarted this job's processes (`--max-restarts`); 0 at first."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_processes(timeout_minutes: float) -> bool:
    """Join torchrun's process group when this process is one of several; True if it did.

    One group serves both kinds of tensors: gloo carries CPU tensors (metric sums, decisions,
    Python objects) and, when CUDA is present, NCCL carries GPU tensors (gradients). Every
    collective gives up after `timeout_minutes`, so a rank that died or hung ends the job with an
    error instead of leaving the others waiting for ever.
    """
    _, world_size, local_rank = process_layout()
    if world_size == 1 or dist.is_initialized():
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        # One process per GPU: the local rank names this process's GPU before any CUDA work.
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    except RuntimeError as error:
        if restart_count() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            raise UserError(f"{SHARED_STORE_HINT} ({str(error).splitlines()[0][:200]})") from None
        raise
    return True


def end_processes(started: bool) -> None:
    """Wait for every rank to finish, then leave the process group `init_processes` joined."""
    if started and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet_unless_main() -> None:
    """Only rank 0 prints progress and results; the others still print warnings and errors."""
    if not is_main():
        logger.setLevel(logging.WARNING)


def barrier() -> None:
    """Wait until every rank got here (for example: rank 0 finished writing a checkpoint)."""
    if _several():
        dist.barrier()


def broadcast_from_main(compute: Callable[[], T]) -> T:
    """Run `compute` on rank 0 only and give every rank its result (a picklable object).

    A UserError raised on rank 0 is raised on every rank with the same message, so the job ends
    with one clear line and no rank is left waiting.
    """
    if not _several():
        return compute()
    payload: list[Any] = [None]
    if is_main():
        try:
            payload[0] = ("ok", compute())
        except UserError as error:
            payload[0] = ("error", str(error))
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise UserError(value)
    return value  # type: ignore[no-any-return]


def main_first(compute: Callable[[], T]) -> T:
    """Run `compute` on rank 0, then on the other ranks: what rank 0 downloads or unpacks into a
    shared cache, the others then find there instead of racing it. A UserError on rank 0 is raised
    on every rank."""
    if not _several():
        return compute()
    failure: list[str | None] = [None]
    result: T | None = None
    if is_main():
        try:
            result = compute()
        except UserError as error:
            failure[0] = str(error)
    dist.broadcast_object_list(failure, src=0)  # also the barrier the others wait at
    if failure[0] is not None:
        raise UserError(failure[0])
    return result if is_main() else compute()  # type: ignore[return-value]


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all ranks (a new tensor; `values` is untouched).
    On a GPU this queues the reduction without waiting for it, like any other kernel."""
    if not _several():
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def main_values(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's values of `tensors` (the same list of shapes on every rank), as new tensors; the
    given ones are left as they are. One broadcast per dtype. A single process gets `tensors` back."""
    if not _several() or not tensors:
        return tensors
    values: list[torch.Tensor] = list(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    for indices in by_dtype.values():
        flat = torch.cat([tensors[index].detach().reshape(-1) for index in indices])
        dist.broadcast(flat, src=0)
        parts = flat.split([tensors[index].numel() for index in indices])
        for index, part in zip(indices, parts, strict=True):
            values[index] = part.view(tensors[index].shape)
    return values


def gather_to_main(value: T) -> list[T] | None:
    """Every rank's `value` (a picklable object), in rank order, on rank 0; None on the others."""
    if not _several():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size() if is_main() else []
    dist.gather_object(value, gathered if is_main() else None, dst=0)
    return gathered if is_main() else None


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one: a decision all ranks share."""
    if not _several():
        return flag
    return bool(sum_across(torch.tensor([int(flag)])).item())


def max_across(value: int) -> int:
    """The largest of an integer's values over all ranks (say, the number of a signal one received)."""
    if not _several():
        return value
    total = torch.tensor([value])
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total.item())


def count_across(count: int) -> int:
    """The sum of a count (say, this step's images) over all ranks."""
    if not _several():
        return count
    return int(sum_across(torch.tensor([count])).item())


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank, so that all ranks skip or stop together."""
    finite = torch.isfinite(loss).all()
    if not _several():
        return bool(finite)
    return bool(sum_across(finite.to(torch.float32).reshape(1)).item() == dist.get_world_size())


def lost_contact_message(error: BaseException, run_dir: Path, timeout_minutes: float) -> str | None:
    """A one-line explanation when `error` says another process stopped answering (it died, hung,
    or its machine left the network) and the collectives gave up; None for any other error."""
    if not _several() or not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    words = ("Timed out", "timed out", "Connection closed", "Connection reset", "NCCL", "gloo")
    if not isinstance(error, dist.DistError) and not any(word in text for word in words):
        return None
    detail = text.splitlines()[0].rsplit("] ", 1)[-1] if text else type(error).__name__
    return (
        f"another training process stopped answering ({detail}; --dist-timeout is {timeout_minutes:g} "
        f"min), so this one stops too; resume from the last checkpoint with any number of processes: "
        f"visionfit train --resume {run_dir}"
    )


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as DistributedDataParallel (gradients averaged over ranks), or as it is in a single
    process. DDP starts every rank from rank 0's weights and buffers."""
    if not _several():
        return model
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def convert_sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """BatchNorm layers that compute their statistics over the global batch instead of each rank's
    share (a no-op in one process; same state-dict keys, so checkpoints load into plain BatchNorm)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if enabled else model
