"""Checking an exported ONNX file against the PyTorch model it came from: `onnx.checker`'s full
check, then onnxruntime's outputs against the float32 PyTorch wrapper's (`NormalizedClassifier`,
what the graph computes) on the same pictures, fed in batches of 1, 2 and 7. Used by `export.writing` for
every file it writes and by `quantization` for the int8 one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionfit.errors import UserError
from visionfit.export.graph import NormalizedClassifier, one_line
from visionfit.inference.onnx_runtime import INPUT_NAME, OUTPUT_NAMES, open_session

logger = logging.getLogger(__name__)

VERIFY_BATCHES = (1, 2, 7)
# onnxruntime computes the same float32 function in another order (fused kernels): its logits may
# differ by rounding, which stays far below this share of the largest logit.
RELATIVE_TOLERANCE = 1e-3


@dataclass
class Comparison:
    """onnxruntime's logits against PyTorch's on the same pictures, fed in batches of 1, 2 and 7."""

    max_difference: float
    agreement: int
    count: int
    largest_logit: float
    images: str

    @property
    def tolerance(self) -> float:
        return RELATIVE_TOLERANCE * max(1.0, self.largest_logit)

    def describe(self, against: str = "PyTorch") -> str:
        batches = ", ".join(str(size) for size in VERIFY_BATCHES)
        return (
            f"onnxruntime vs {against} on {self.images}, at batch {batches}: max logit difference "
            f"{self.max_difference:.2g}, top-1 agreement {self.agreement}/{self.count}"
        )


def run_in_batches(path: Path, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """An ONNX file's logits and probabilities for `pixels`, fed as batches of 1, 2 and 7."""
    session = open_session(path, "cpu")
    results, start = [], 0
    for size in VERIFY_BATCHES:
        batch = pixels[start : start + size].numpy()
        results.append(session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch}))
        start += size
    return np.concatenate([logits for logits, _ in results]), np.concatenate([prob for _, prob in results])


def compare_with_torch(
    path: Path, wrapper: NormalizedClassifier, pixels: torch.Tensor, images: str
) -> Comparison:
    """The file's outputs against the PyTorch wrapper's in float32, on `pixels` (described by `images`)."""
    with torch.inference_mode():
        expected = wrapper(pixels)[0].numpy()
    logits, probabilities = run_in_batches(path, pixels)
    # The graph's own softmax is checked too, against the softmax of its logits (its error counts
    # as a logit difference: it is far smaller whenever the graph is right).
    softmax = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    difference = max(float(np.abs(logits - expected).max()), float(np.abs(probabilities - softmax).max()))
    if not np.isfinite(logits).all():
        difference = float("inf")
    agreement = int((logits.argmax(axis=1) == expected.argmax(axis=1)).sum())
    return Comparison(difference, agreement, len(pixels), float(np.abs(expected).max()), images)


def check_graph(path: Path) -> None:
    """onnx.checker's full check (with strict shape inference), or one line saying what failed."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # ValidationError, InferenceError
        raise UserError(
            f"onnx.checker rejected the exported graph ({one_line(error)}); nothing written"
        ) from None


def check_against_torch(comparison: Comparison) -> None:
    if not comparison.max_difference <= comparison.tolerance:
        raise UserError(
            f"the exported graph does not compute what PyTorch computes: {comparison.describe()} (tolerance "
            f"{comparison.tolerance:.2g}); nothing written"
        )


def verify_float(
    path: Path,
    wrapper: NormalizedClassifier,
    pixels: torch.Tensor,
    images: str,
) -> Comparison:
    """The full check and the comparison with PyTorch of a float file; raises when either fails."""
    check_graph(path)
    logger.info("onnx.checker: full check passed")
    comparison = compare_with_torch(path, wrapper, pixels, images)
    check_against_torch(comparison)
    logger.info(comparison.describe())
    return comparison
