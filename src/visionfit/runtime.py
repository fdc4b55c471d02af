"""Where the computation runs: device choice, precision, seeding and the process layout (the
process group itself is joined in `distributed`).

Everything that differs between a laptop CPU, a GPU and a torchrun job is decided here once, so the
loops only ever call `runtime.autocast()`, `runtime.to_device(...)` and read `runtime.is_main`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from visionfit.errors import UserError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_name(name: str) -> None:
    if not _DEVICE_PATTERN.match(name):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


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
        return tensor.to(self.device, non_blocking=self.device.type == "cuda")


def create_runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    """Pick the device and check that the requested precision works there."""
    resolved = resolve_device(device)
    if precision not in PRECISION_DTYPES:
        raise UserError(f"--precision must be one of {', '.join(PRECISION_DTYPES)}, got {precision!r}")
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    from visionfit.distributed import joined_layout

    rank, world_size, local_rank = joined_layout()
    return Runtime(
        device=resolved, precision=precision, rank=rank, world_size=world_size, local_rank=local_rank
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
