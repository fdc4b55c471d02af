"""Do two source trees answer the same? `predict`, `eval` and `export` of one checkpoint, compared.

Writes a cifar10-quick checkpoint with random weights (seeded) whose recorded data are a folder
dataset (`--data-dir`, with train/ and val/ or split by the recorded fraction) and whose training
tested with flip and a 1-pixel shift, then runs, for the tree under test (this one) and for
`--baseline` (another checkout's `src`), each as its own `python -m visionfit`: `predict --json`
of the val/ images (fp32) and `eval --out` (fp32) of the checkpoint, `export`, and `predict --json`
and `eval --out` of the export. The outputs must be equal byte for byte once the run folder's name
is taken out of them (and export's trace time); the ONNX files must hold the same graph, weights
and metadata (the exporter's debug notes name the Python module the wrapper lives in, so they
differ when that module moved).

    python benchmarks/inference_outputs.py --baseline /path/to/old/checkout/src \
        --data-dir ~/.cache/visionfit-dev/flowers-dev
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from visionfit.data.registry import load_data
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.models import ModelRecord, create_model

SOURCE = Path(__file__).resolve().parents[1] / "src"
TREES = ("baseline", "tested")
TEXT_OUTPUTS = [
    "predict.jsonl",
    "eval.txt",
    "eval/metrics.json",
    "eval/confusion_matrix.csv",
    "export.txt",
    "predict_onnx.jsonl",
    "eval_onnx.txt",
    "eval_onnx/metrics.json",
]


def write_checkpoint(path: Path, data_dir: str) -> None:
    classes = load_data("folder", data_dir, download=False).classes
    torch.manual_seed(0)
    model = create_model("cifar10-quick", len(classes))
    preprocess = Preprocess(32, (0.5, 0.45, 0.4), (0.25, 0.24, 0.26), "crop", 0.875, "bilinear")
    config = {"dataset": "folder", "data_dir": data_dir, "val_fraction": 0.1, "seed": 0}
    config |= {"test_time_flip": True, "test_time_shift": 1}
    record = ModelRecord("cifar10-quick", len(classes))
    save_checkpoint(path, model.state_dict(), checkpoint_metadata(record, classes, preprocess, config=config))


def run_tree(source: Path, checkpoint: Path, images: str, out: Path) -> None:
    """The five commands with `source` first on the path; each one's stdout into `out`."""
    out.mkdir(parents=True)
    environment = {**os.environ, "PYTHONPATH": str(source), "VISIONFIT_CACHE": str(out / "cache")}
    onnx = out / "model.onnx"
    commands = {
        "predict.jsonl": ["predict", str(checkpoint), images, "--json", "--precision", "fp32"],
        "eval.txt": ["eval", str(checkpoint), "--precision", "fp32", "--out", str(out / "eval")],
        "export.txt": ["export", str(checkpoint), "--out", str(onnx)],
        "predict_onnx.jsonl": ["predict", str(onnx), images, "--json"],
        "eval_onnx.txt": ["eval", str(onnx), "--out", str(out / "eval_onnx")],
    }
    for name, arguments in commands.items():
        with open(out / name, "w") as stdout:
            command = [sys.executable, "-m", "visionfit", *arguments]
            subprocess.run(command, stdout=stdout, env=environment, check=True)


def onnx_differences(first: Path, second: Path) -> list[str]:
    import onnx

    models = [onnx.load(str(path)) for path in (first, second)]
    metadata = [{entry.key: entry.value for entry in model.metadata_props} for model in models]
    differences = ["file metadata"] if metadata[0] != metadata[1] else []
    for model in models:
        for node in model.graph.node:
            del node.metadata_props[:]  # the exporter's notes: module names, stack traces
        del model.metadata_props[:]
    if models[0].SerializeToString() != models[1].SerializeToString():
        differences.append("graph or weights")
    return differences


def normalised(text: str, run_folder: Path) -> str:
    """Without the run folder's name and export's trace time."""
    return re.sub(r"in [0-9.]+ s\b", "in T s", text.replace(str(run_folder), "RUN"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the other tree's src folder")
    parser.add_argument("--data-dir", required=True, help="a folder dataset (class folders)")
    arguments = parser.parse_args()
    data_dir = str(Path(arguments.data_dir).expanduser().resolve())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = root / "model.safetensors"
        write_checkpoint(checkpoint, data_dir)
        images = str(Path(data_dir) / "val") if (Path(data_dir) / "val").is_dir() else data_dir
        for tree, source in zip(TREES, (Path(arguments.baseline), SOURCE), strict=True):
            run_tree(source, checkpoint, images, root / tree)
        different = [
            name
            for name in TEXT_OUTPUTS
            if len({normalised((root / tree / name).read_text(), root / tree) for tree in TREES}) > 1
        ]
        onnx_files = [root / tree / "model.onnx" for tree in TREES]
        different += [f"model.onnx: {item}" for item in onnx_differences(*onnx_files)]
        print("identical" if not different else f"DIFFERENT: {', '.join(different)}")
        sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
