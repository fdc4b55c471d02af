"""Everything a run needs to continue exactly where it stopped, as checkpoint tensors plus JSON.

Optimizer, scheduler and grad-scaler state dicts, the RNG states and the loop's own counters are
flattened into safetensors tensors (names with '/') and a JSON skeleton that says where each
tensor goes, so a resumed run is restored without pickle and bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

TENSOR_KEY = "__tensor__"
DICT_KEY = "__dict__"
TUPLE_KEY = "__tuple__"


@dataclass
class TrainState:
    """The loop's position and running sums. `epoch` is the epoch being trained (1-based) and
    `batch` how many of its batches are done, so (epoch, batch) is where training continues."""

    epoch: int = 1
    batch: int = 0
    global_step: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_score: float | None = None  # the best epoch's --best-metric score (higher is better)
    time_epochs: int = 0  # the epochs --time last fitted (0: none fitted yet, or no --time)
    out_of_time: bool = False  # --time stopped the run before its fitted epochs (they grew slower)
    epoch_loss_sum: float = 0.0  # summed per-sample loss of this epoch's finished batches
    epoch_samples: int = 0
    epoch_seconds: float = 0.0  # training time spent in this epoch before the last resume
    skipped_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def finish_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.epoch_loss_sum = 0.0
        self.epoch_samples = 0
        self.epoch_seconds = 0.0


def flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure with a reference and collect it in `tensors`.

    Dicts keep their key types (optimizer state is keyed by int) and tuples stay tuples.
    """
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().clone()
        return {TENSOR_KEY: prefix}
    if isinstance(value, dict):
        return {DICT_KEY: [[key, flatten(item, f"{prefix}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE_KEY: [flatten(item, f"{prefix}/{index}", tensors) for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [flatten(item, f"{prefix}/{index}", tensors) for index, item in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(value, dict):
        if TENSOR_KEY in value:
            return tensors[value[TENSOR_KEY]]
        if DICT_KEY in value:
            return {key: unflatten(item, tensors) for key, item in value[DICT_KEY]}
        if TUPLE_KEY in value:
            return tuple(unflatten(item, tensors) for item in value[TUPLE_KEY])
        return {key: unflatten(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [unflatten(item, tensors) for item in value]
    return value


def capture_rng_states() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states.

    visionfit's own data order and augmentation do not read these (they are seeded per epoch and
    sample), but a model's dropout or a user's code may.
    """
    python_version, python_state, python_gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": (python_version, torch.tensor(python_state, dtype=torch.int64), python_gauss),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    python_version, python_state, python_gauss = states["python"]
    random.setstate((python_version, tuple(int(item) for item in python_state.tolist()), python_gauss))
    numpy = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def capture_training_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for the checkpoint, JSON for its metadata) describing the whole training state."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "optimizer": flatten(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": flatten(scheduler.state_dict(), "scheduler", tensors),
        "scaler": flatten(scaler.state_dict(), "scaler", tensors),
        "rng": flatten(capture_rng_states(), "rng", tensors),
        "loop": state.to_dict(),
    }
    return tensors, skeleton


def restore_training_state(
    skeleton: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load what `capture_training_state` saved into fresh objects; returns the loop state.

    RNG states are restored last, after everything that builds objects has consumed randomness.
    """
    optimizer.load_state_dict(unflatten(skeleton["optimizer"], tensors))
    scheduler.load_state_dict(unflatten(skeleton["scheduler"], tensors))
    scaler_state = unflatten(skeleton["scaler"], tensors)
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    restore_rng_states(unflatten(skeleton["rng"], tensors))
    return TrainState.from_dict(skeleton["loop"])
