"""Throughput of `visionfit predict` on a folder of small images, after start-up.

Copies the first N images (sorted) of an image folder tree into a temporary folder, writes a
cifar10-quick checkpoint with random weights (throughput does not depend on the weights) unless
`--checkpoint` names a trained one, then
times the predictor's `predict_sources` over the folder (decoding, batching, inference, top-k),
excluding interpreter start and checkpoint loading, which it reports separately.

    python benchmarks/predict_speed.py --images ~/.cache/visionfit-dev/cifar10/test --count 1000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from visionfit.data.cifar import CIFAR10_CLASSES
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.models import create_model, record_of
from visionfit.models.quick import CIFAR10_MEAN, CIFAR10_STD
from visionfit.prediction import expand_inputs, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="a folder (searched recursively) of images")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--checkpoint", help="a trained checkpoint or run folder (default: random cifar10-quick weights)"
    )
    parser.add_argument("--no-test-time-flip", action="store_true", help="no mirror-image pass")
    parser.add_argument(
        "--test-time-shift", type=int, default=None, help="shifted copies (default: as the checkpoint)"
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sources = expand_inputs([arguments.images])[: arguments.count]
        for index, source in enumerate(sources):
            shutil.copyfile(source, root / f"{index:05d}{Path(source).suffix}")
        checkpoint = arguments.checkpoint
        if checkpoint is None:
            model = create_model("cifar10-quick", 10)
            preprocess = Preprocess(32, CIFAR10_MEAN, CIFAR10_STD)
            metadata = checkpoint_metadata(record_of(model), CIFAR10_CLASSES, preprocess)
            checkpoint = root / "model.safetensors"
            save_checkpoint(checkpoint, model.state_dict(), metadata)
        started = time.perf_counter()
        predictor = load(
            checkpoint,
            device="cpu",
            flip=False if arguments.no_test_time_flip else None,
            shift=arguments.test_time_shift,
        )
        print(
            f"checkpoint load: {time.perf_counter() - started:.3f} s; "
            f"torch threads {torch.get_num_threads()}; model {type(predictor.model.network).__name__}, "
            f"precision {predictor.model.runtime.precision}, "
            f"test-time flip {predictor.model.flip}, shift {predictor.model.shift}"
        )
        files = expand_inputs([str(root)])
        rates = []
        for _ in range(arguments.repeats):
            started = time.perf_counter()
            rows = list(
                predictor.predict_sources(
                    files, top_k=3, batch_size=arguments.batch_size, threads=arguments.threads
                )
            )
            seconds = time.perf_counter() - started
            assert len(rows) == len(files) and not any(row.error for row in rows)
            rates.append(len(files) / seconds)
        rates.sort()
        print(
            f"{len(files)} images: median {rates[len(rates) // 2]:,.0f} images/s "
            f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f}) over {arguments.repeats} runs"
        )


if __name__ == "__main__":
    main()
