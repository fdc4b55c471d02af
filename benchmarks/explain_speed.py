"""`visionfit explain` against `visionfit predict` on the same 100 photos with the same resnet18:
the wall time of each (decoding, resizing, the network; for explain also the Grad-CAM backward pass,
the overlays and their PNG files), in one process, alternating, the median of the rounds.

    python benchmarks/explain_speed.py --photos ~/.cache/visionfit-dev/flowers-dev/val --rounds 3

The weights are resnet18's architecture with random initial weights (no download here): a map
costs the same whatever the weights are. The first 20 files of each class folder (sorted) are used.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.explaining import Explainer, explain_files
from visionfit.inference import load_for_inference
from visionfit.models import ModelRecord, create_model, get_model_spec
from visionfit.prediction import Predictor


def photos(folder: Path, per_class: int) -> list[str]:
    chosen = []
    for class_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
        chosen += [str(path) for path in sorted(class_folder.iterdir())[:per_class]]
    return chosen


def resnet18_checkpoint(path: Path, classes: list[str]) -> Path:
    torch.manual_seed(0)
    spec = get_model_spec("resnet18")
    preprocess = Preprocess(
        spec.input_size, spec.mean, spec.std, "crop", spec.crop_fraction, spec.interpolation
    )
    model = create_model("resnet18", len(classes))
    save_checkpoint(
        path,
        model.state_dict(),
        checkpoint_metadata(ModelRecord("resnet18", len(classes)), classes, preprocess),
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--photos", type=Path, default=Path("~/.cache/visionfit-dev/flowers-dev/val").expanduser()
    )
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    arguments = parser.parse_args()
    sources = photos(arguments.photos, arguments.per_class)
    classes = sorted(path.name for path in arguments.photos.iterdir() if path.is_dir())
    with tempfile.TemporaryDirectory() as work:
        model = load_for_inference(
            resnet18_checkpoint(Path(work) / "resnet18.safetensors", classes), device="cpu", precision="fp32"
        )
        predictor, explainer = Predictor(model), Explainer(model)
        times: dict[str, list[float]] = {"predict": [], "explain": []}
        for _ in range(arguments.rounds + 1):  # the first round warms up and is not counted
            started = time.perf_counter()
            list(predictor.predict_sources(sources, batch_size=arguments.batch_size))
            times["predict"].append(time.perf_counter() - started)
            started = time.perf_counter()
            explain_files(explainer, sources, Path(work) / "maps", batch_size=arguments.batch_size)
            times["explain"].append(time.perf_counter() - started)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    print(
        f"# {platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{len(sources)} photos"
    )
    for name, values in times.items():
        print(f"{name}: median {medians[name]:.2f} s ({', '.join(f'{value:.2f}' for value in values[1:])})")
    print(f"explain / predict: {medians['explain'] / medians['predict']:.2f}x")


if __name__ == "__main__":
    main()
