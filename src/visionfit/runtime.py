"""Where the computation runs: device choice, precision, seeding and the process layout (the
process group itself is joined in `distributed`).

Everything that differs between a laptop CPU, a GPU and a torchrun job is decided here once, so the
loops only ever call `runtime.autocast()`, `runtime.to_device(...)` and read `runtime.is_main`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from visionfit.choices import CHANNELS_LAST, PRECISIONS, check_device_name
from visionfit.distributed import joined_layout
from visionfit.errors import UserError

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """Turn a --device value into a usable torch.device, or explain why it cannot be used."""
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: PyTorch sees no CUDA GPU here; use --device cpu "
                "(or auto to pick the best available)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) "
                f"are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            f"--device {name}: Apple's MPS backend is not available here; use --device cpu or auto"
        )
    return device


@dataclass
class Runtime:
    """The device, precision and process layout of one training or inference job."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dtype(self) -> torch.dtype:
        return PRECISION_DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """A context for forward passes: a no-op in fp32, autocast otherwise (no branches in loops)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 has a range small enough for gradients to underflow; bf16 needs no scaling.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=self.device.type == "cuda")
        if self.channels_last and tensor.dim() == 4:  # a batch of images; a no-op when it already is
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device, in channels_last layout where that was chosen."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's and DDP's wrappers, whose state-dict keys carry no
    `_orig_mod.` or `module.` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bfloat16 arithmetic (AVX512-BF16 or AMX). Elsewhere autocast's bf16
    kernels emulate it and ran 4-8x slower than fp32 (benchmarks/RESULTS.md, AVX2 EPYC)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def auto_precision(device: torch.device) -> str:
    """The fastest precision that keeps accuracy on `device`: bf16 where the hardware computes in
    it, fp16 (with a grad scaler) on older GPUs, fp32 otherwise (also on MPS)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def auto_channels_last(device: torch.device) -> bool:
    """channels_last (NHWC) on CPU, where oneDNN's convolutions run in it natively (1.5x on the
    tutorial net, RESULTS.md), and on CUDA, where it feeds tensor cores; not on MPS."""
    return device.type in ("cpu", "cuda")


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every allocation above 128 KiB-32 MiB is a fresh mmap and every free an munmap, so
    each training step of a CPU run faults its activations' pages in again: about 100,000 page
    faults a second and a third of the CPU time in the kernel for airnet at batch 512
    (benchmarks/RESULTS.md). Serving big blocks from the heap and never trimming it removes that;
    the process keeps its peak memory instead of returning it between steps. Returns whether it
    applied (glibc on Linux only; elsewhere nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def create_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto") -> Runtime:
    """Pick the device, then the precision and memory layout for it (or check the requested ones)."""
    resolved = resolve_device(device)
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = auto_precision(resolved)
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    if channels_last not in CHANNELS_LAST:
        raise UserError(f"--channels-last must be one of {', '.join(CHANNELS_LAST)}, got {channels_last!r}")
    layout = auto_channels_last(resolved) if channels_last == "auto" else channels_last == "on"
    if resolved.type == "cpu":
        keep_freed_memory()
    rank, world_size, local_rank = joined_layout()
    return Runtime(
        device=resolved,
        precision=precision,
        channels_last=layout,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
    )


def configure_determinism(enabled: bool) -> None:
    """With `enabled`, allow only deterministic kernels, so that the same inputs give the same bits
    in any process: what makes a resumed run end identical to an uninterrupted one."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so that model initialisation is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
