"""`visionfit export` and exported files: metadata that round-trips, batch 1/2/7 against PyTorch,
refused tampered or foreign files, predict/eval parity with the checkpoint, a user's own model
file, the missing extra, int8 quantization, and README's plain-onnxruntime lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import visionfit
from conftest import make_folder_dataset, make_image
from visionfit.cli import main
from visionfit.data.augment import Normalize
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import checkpoint_metadata, save_checkpoint
from visionfit.errors import UserError
from visionfit.export import ExportOptions, checks, export_onnx
from visionfit.export.graph import NormalizedClassifier
from visionfit.inference import InferenceOptions, load_for_inference
from visionfit.inference.onnx_runtime import load_onnx
from visionfit.models import ModelRecord, create_model
from visionfit.prediction import picture_pixels

CLASSES = ["apple", "grape", "lime"]
README = Path(__file__).resolve().parents[1] / "README.md"
# A crop resize with a crop fraction, so that the shorter side (37) differs from the input size.
PREPROCESS = Preprocess(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop", 0.875, "bilinear")


def write_checkpoint(path: Path, data: Path | None, flip: bool = True) -> Path:
    torch.manual_seed(0)
    model = create_model("cifar10-quick", len(CLASSES))
    config = {"test_time_flip": flip}
    if data is not None:
        config |= {"dataset": "folder", "data_dir": str(data), "test_fraction": 0.25, "seed": 0}
    metadata = checkpoint_metadata(
        ModelRecord("cifar10-quick", len(CLASSES)), CLASSES, PREPROCESS, config=config, epoch=3
    )
    save_checkpoint(path, model.state_dict(), metadata)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_folder_dataset(root / "fruit", per_class=8)
    checkpoint = write_checkpoint(root / "model.safetensors", data)
    with logged_lines() as lines:
        result = export_onnx(checkpoint, root / "out" / "model.onnx")
    return checkpoint, result, lines, data


@contextlib.contextmanager
def logged_lines() -> Iterator[list[str]]:
    """The messages of the `visionfit` loggers while the block runs."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("visionfit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def metadata_of(path: Path) -> dict:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()}


def test_one_verified_self_contained_file_whose_metadata_round_trips(exported):
    checkpoint, result, lines, data = exported
    assert sorted(path.name for path in result.path.parent.iterdir()) == ["model.onnx"]  # no side file
    assert not onnx.load(str(result.path), load_external_data=False).graph.initializer[0].external_data
    metadata = metadata_of(result.path)
    assert metadata["classes"] == CLASSES and metadata["input_size"] == 32
    assert metadata["resize"] | {"how": None} == {
        "mode": "crop",
        "shorter_side": 37,
        "crop_fraction": 0.875,
        "interpolation": "bilinear",
        "antialias": True,
        "how": None,
    }
    assert metadata["normalization"] == {
        "mean": list(PREPROCESS.mean),
        "std": list(PREPROCESS.std),
        "in_graph": True,
    }
    assert metadata["input"]["layout"] == "NCHW" and metadata["input"]["value_range"] == [0.0, 1.0]
    assert metadata["model"]["name"] == "cifar10-quick"
    assert metadata["test_time_augmentation"] == {"flip": True, "shift": 0, "in_graph": False}
    assert metadata["source_checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert metadata["training_data"] == {
        "dataset": "folder",
        "data_dir": str(data),
        "test_fraction": 0.25,
        "seed": 0,
    }
    assert {"visionfit", "torch", "onnx", "onnxruntime"} <= set(metadata["versions"])
    model = load_onnx(result.path, InferenceOptions(device="cpu"))
    assert model.preprocess == PREPROCESS and model.classes == CLASSES and model.flip and model.shift == 0
    assert "onnx.checker: full check passed" in lines
    assert any("on 10 test images of" in line and "top-1 agreement 10/10" in line for line in lines)


def test_dynamic_batch_axis_matches_pytorch_at_batch_1_2_and_7(exported):
    checkpoint, result, _, _ = exported
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    reference = NormalizedClassifier(
        load_for_inference(checkpoint, device="cpu", precision="fp32").model, PREPROCESS
    )
    for batch in (1, 2, 7):
        pixels = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        logits, probabilities = session.run(["logits", "probabilities"], {"pixels": pixels.numpy()})
        with torch.inference_mode():
            expected_logits, expected_probabilities = reference.eval()(pixels)
        assert logits.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(logits, expected_logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(probabilities, expected_probabilities.numpy(), atol=1e-5)


def test_predict_and_eval_of_the_export_equal_the_checkpoints(exported, tmp_path, capsys):
    checkpoint, result, _, _ = exported
    images = []
    for index, size in enumerate([(32, 32), (50, 40), (17, 61), (64, 48)]):
        make_image(tmp_path / f"{index}.png", (90 + 40 * index, 200 - 50 * index, 60), size=size, seed=index)
        images.append(tmp_path / f"{index}.png")
    from_checkpoint = visionfit.load(checkpoint, device="cpu", precision="fp32")
    from_onnx = visionfit.load(result.path)
    assert from_onnx.model.flip  # the checkpoint's test-time augmentation came along
    for expected, got in zip(
        from_checkpoint.predict(images, top_k=3), from_onnx.predict(images, top_k=3), strict=True
    ):
        assert [name for name, _ in got] == [name for name, _ in expected]
        assert [value for _, value in got] == pytest.approx([value for _, value in expected], abs=1e-5)

    def report(source: Path, *flags: str) -> str:
        assert main(["eval", str(source), *flags]) == 0
        return capsys.readouterr().out.split("\n", 1)[1]  # the first line names the file

    checkpoint_report = report(checkpoint, "--precision", "fp32", "--device", "cpu")
    assert "precision" in checkpoint_report and report(result.path) == checkpoint_report  # its own data


def test_files_without_or_with_tampered_metadata_are_refused_in_one_line(exported, tmp_path, capsys):
    _, result, _, _ = exported
    image = tmp_path / "a.png"
    make_image(image, (200, 30, 30), size=(40, 40))
    bare = onnx.load(str(result.path))
    del bare.metadata_props[:]
    onnx.save_model(bare, str(tmp_path / "bare.onnx"))
    assert main(["predict", str(tmp_path / "bare.onnx"), str(image)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no visionfit metadata" in error and "--classes" in error
    # Someone else's classifier: named classes, input size from the graph, [0, 1] RGB in.
    assert main(["predict", str(tmp_path / "bare.onnx"), str(image), "--classes", "a,b,c", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class"] in {"a", "b", "c"}
    assert main(["predict", str(tmp_path / "bare.onnx"), str(image), "--classes", "a,b,c,d"]) == 2
    assert "4 class names for a graph with 3 outputs" in capsys.readouterr().err

    tampered = onnx.load(str(result.path))
    for entry in tampered.metadata_props:
        if entry.key == "classes":
            entry.value = json.dumps([*CLASSES, "pear"])
    onnx.save_model(tampered, str(tmp_path / "tampered.onnx"))
    assert main(["predict", str(tmp_path / "tampered.onnx"), str(image)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "4 class names for a graph with 3 outputs" in error and "altered" in error


def test_a_failed_check_exits_non_zero_and_leaves_no_file(exported, tmp_path, monkeypatch, capsys):
    checkpoint, _, _, _ = exported
    monkeypatch.setattr(checks, "RELATIVE_TOLERANCE", -1.0)  # any difference now fails
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "does not compute what PyTorch computes" in error and "nothing written" in error
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary


MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        input_size = 16

        def __init__(self, num_classes=3):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
            self.head = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))
    """
)


def test_a_users_own_model_file_exports_and_the_export_runs_without_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("visionfit")  # as a library user finds it: nobody configured it
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    (tmp_path / "mine.py").write_text(MODEL_FILE)
    model = create_model("mine.py:Tiny", len(CLASSES))
    preprocess = Preprocess(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    visionfit.save_model(model, tmp_path / "mine.safetensors", classes=CLASSES, preprocess=preprocess)
    (tmp_path / "mine.py").write_text(MODEL_FILE + "\n# changed\n")
    with pytest.raises(UserError, match=r"refusing to run .*mine\.py"):
        export_onnx(tmp_path / "mine.safetensors")
    trusted = InferenceOptions(model_code="trust")
    with logged_lines() as lines:
        result = export_onnx(tmp_path / "mine.safetensors", inference=trusted)
    output = capsys.readouterr()
    assert "running " in output.err  # the trust gate said which file it ran
    assert output.out == ""  # a library call prints nothing unless the caller configures logging
    assert any("10 random inputs" in line for line in lines)  # no data recorded: random inputs
    with pytest.raises(UserError, match="--quantize int8 needs training images.*--dataset/--data-dir"):
        export_onnx(tmp_path / "mine.safetensors", options=ExportOptions(quantize="int8"), inference=trusted)
    (tmp_path / "mine.py").unlink()  # the export needs no code
    image = tmp_path / "a.png"
    make_image(image, (30, 200, 60), size=(20, 24))
    with torch.inference_mode():
        pixels = picture_pixels(image, preprocess).unsqueeze(0)
        expected = torch.softmax(model.eval()(Normalize(preprocess, torch.device("cpu"))(pixels)), dim=1)[0]
    assert main(["predict", str(result.path), str(image), "--json", "--top-k", "3"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["class"] == CLASSES[int(expected.argmax())]
    assert record["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_without_the_export_extra_one_line_says_what_to_install(exported, monkeypatch, capsys):
    checkpoint, result, _, _ = exported
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    assert main(["export", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    hint = 'pip install "visionfit[export]"'
    assert error == f"visionfit: error: visionfit export needs onnxscript, not installed: {hint}"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(result.path), str(checkpoint)]) == 2
    assert (
        'needs onnxruntime, which is not installed: pip install "visionfit[export]"'
        in capsys.readouterr().err
    )


def test_help_imports_neither_onnx_nor_torch():
    code = (
        "import sys; from visionfit.cli import build_parser; build_parser(); "
        "print([name for name in ('onnx', 'onnxscript', 'onnxruntime', 'torch') if name in sys.modules])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_int8_quantization_writes_a_smaller_working_model(exported, tmp_path):
    checkpoint, result, _, _ = exported
    with logged_lines() as lines:
        options = ExportOptions(quantize="int8", calibration_images=12)
        quantized = export_onnx(checkpoint, tmp_path / "model.int8.onnx", options)
    report = quantized.quantization
    assert report.calibration_images == 12 and report.test_images == 6  # a quarter of 24 held out
    assert 0 <= report.int8_accuracy <= 1 and report.float_speed > 0 and report.int8_speed > 0
    graph = onnx.load(str(quantized.path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.graph.node}
    assert quantized.size_bytes < result.size_bytes  # int8 weights
    metadata = metadata_of(quantized.path)  # every value still JSON, the quantizer's notes included
    assert metadata["classes"] == CLASSES and metadata["quantization"]["calibration_images"] == 12
    assert metadata["quantization"]["test_accuracy"] == report.int8_accuracy
    model = load_onnx(quantized.path, InferenceOptions(device="cpu"))
    assert model.test_accuracy == report.int8_accuracy
    assert model.probabilities(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 3)
    assert any(line.startswith("int8 ") for line in lines)


def readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    (snippet,) = [block for block in blocks if "onnxruntime.InferenceSession" in block]
    return snippet


def test_readmes_plain_onnxruntime_lines_classify_as_visionfit_does(exported, tmp_path, capsys):
    _, result, _, _ = exported
    predictor = visionfit.load(result.path, flip=False)  # the lines are one pass
    for index, size in enumerate([(50, 40), (41, 77), (37, 37), (80, 75), (43, 60), (60, 43), (33, 300)]):
        image = tmp_path / f"{index}.jpg"
        make_image(image, (60 + 30 * index, 180 - 25 * index, 90), size=size, seed=index)
        code = readme_snippet().replace('"model.onnx"', repr(str(result.path)))
        namespace: dict = {}
        exec(compile(code.replace('"photo.jpg"', repr(str(image))), "README.md", "exec"), namespace)
        pixels = picture_pixels(image, predictor.preprocess)
        # Pillow's resize and torchvision's antialiased one round a few pixels differently.
        difference = np.abs(namespace["pixels"][0] * 255 - pixels.float().numpy())
        assert difference.max() <= 1.0001 and (difference > 0.01).mean() < 0.02
        expected = predictor.model.probabilities(pixels.unsqueeze(0))[0]
        assert namespace["meta"]["classes"] == CLASSES
        np.testing.assert_allclose(namespace["probabilities"][0], expected.numpy(), atol=1e-4)
        name, probability = capsys.readouterr().out.split()
        assert name == CLASSES[int(expected.argmax())]
        assert float(probability) == pytest.approx(float(expected.max()), abs=1e-4)
