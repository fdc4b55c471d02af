"""`visionfit export` across the model zoo: export time, file size, and how closely onnxruntime
matches PyTorch (largest logit difference, next to the largest logit, which untrained networks keep
small; top-1 agreement; at batch 1, 2 and 7).

Each model is built untrained with random weights (seeded) and saved as a checkpoint with its
zoo preprocessing: export time, file size and float32 parity do not depend on training. The
checks run on test images of `--dataset`/`--data-dir` when given (resized as predict resizes
them), on random inputs otherwise. A model that cannot be exported gets its one-line reason.

    python benchmarks/export_models.py --dataset cifar10 --data-dir ~/.cache/visionfit-dev/cifar10
    python benchmarks/export_models.py --models airnet,resnet18        # a subset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import visionfit
from visionfit.data.cifar import CIFAR10_CLASSES
from visionfit.errors import UserError
from visionfit.export import ExportOptions, export_onnx
from visionfit.models import create_model

MODELS = ("cifar10-quick", "airnet", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")


def export_one(name: str, folder: Path, dataset: str | None, data_dir: str | None) -> str:
    """One Markdown table row for model `name`."""
    torch.manual_seed(0)
    model = create_model(name, len(CIFAR10_CLASSES))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    checkpoint = visionfit.save_model(model, folder / f"{name}.safetensors", classes=list(CIFAR10_CLASSES))
    size = visionfit.load_for_inference(checkpoint, device="cpu").preprocess.input_size
    started = time.perf_counter()
    try:
        result = export_onnx(
            checkpoint, folder / f"{name}.onnx", ExportOptions(dataset=dataset, data_dir=data_dir)
        )
    except UserError as error:
        blank = " – |" * 6
        return f"| {name} | {parameters / 1e6:.2f} M | {size} |{blank} cannot export: {error} |"
    total = time.perf_counter() - started
    check = result.verification
    return (
        f"| {name} | {parameters / 1e6:.2f} M | {size} | {result.seconds:.1f} s | {total:.1f} s | "
        f"{result.size_bytes / 1e6:.1f} MB | {check.max_difference:.1e} | {check.largest_logit:.2g} | "
        f"{check.agreement}/{check.count} | {check.images} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--dataset", help="data whose test images the checks use (default: random inputs)")
    parser.add_argument("--data-dir")
    arguments = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| model | parameters | input | export (trace) | export + checks | file | max logit difference "
        "| largest logit | top-1 agreement | checked on |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in arguments.models.split(","):
            print(export_one(name.strip(), Path(folder), arguments.dataset, arguments.data_dir), flush=True)


if __name__ == "__main__":
    main()
