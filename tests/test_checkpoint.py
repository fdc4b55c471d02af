import json
import pickle
import zipfile

import pytest
import torch

from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import (
    checkpoint_metadata,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from visionfit.errors import UserError
from visionfit.inference import build_model
from visionfit.models import ModelRecord, create_model
from visionfit.serialization import load_model

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar10-quick", 3)
    metadata = checkpoint_metadata(ModelRecord("cifar10-quick", 3), ["x", "y", "z"], PREPROCESS, epoch=2)
    path = tmp_path / "checkpoints" / "best.safetensors"
    save_checkpoint(path, model.state_dict(), metadata)
    return model, path


def test_round_trip_rebuilds_the_same_model(saved):
    model, path = saved
    loaded = load_model(path)
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(images), loaded(images))
    assert not loaded.training
    checkpoint = load_checkpoint(path)
    assert checkpoint.classes == ["x", "y", "z"] and checkpoint.metadata["epoch"] == 2
    assert Preprocess.from_dict(checkpoint.metadata["preprocess"]) == PREPROCESS
    assert checkpoint.metadata["versions"]["torch"] == torch.__version__


def test_sidecar_json_holds_the_same_metadata(saved):
    _, path = saved
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == load_checkpoint(path).metadata


def test_no_temporary_files_are_left_behind(saved):
    _, path = saved
    assert sorted(item.name for item in path.parent.iterdir()) == ["best.json", "best.safetensors"]


def test_extra_tensors_are_kept_apart_from_the_weights(tmp_path):
    model = create_model("cifar10-quick", 2)
    metadata = checkpoint_metadata(ModelRecord("cifar10-quick", 2), ["a", "b"], PREPROCESS)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model.state_dict(), metadata, {"optimizer/step": torch.tensor([3])})
    checkpoint = load_checkpoint(path)
    assert set(checkpoint.model_state) == set(model.state_dict())
    assert checkpoint.extra_tensors["optimizer/step"].tolist() == [3]
    build_model(checkpoint)  # strict loading ignores the training state
    with pytest.raises(ValueError, match="must contain '/'"):
        save_checkpoint(path, {}, metadata, {"step": torch.tensor(1)})


def test_changed_bytes_are_detected(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # a bit flip inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)


def test_truncated_file_is_refused(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_pickles_are_refused_without_being_opened(tmp_path):
    path = tmp_path / "tudui_9.pth"
    torch.save(create_model("cifar10-quick", 10).state_dict(), path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(UserError, match="PyTorch pickle"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="PyTorch pickle"):
        load_checkpoint(raw)


@pytest.mark.parametrize("opening", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_a_pickle_still_load(tmp_path, opening):
    # The first eight bytes are the header length; some lengths start with a pickle's or a zip's magic.
    model = create_model("cifar10-quick", 2)
    path = tmp_path / "best.safetensors"
    wanted = int.from_bytes(opening, "little")
    modulus = 256 ** len(opening)
    padding = 0
    for _ in range(5):
        metadata = checkpoint_metadata(ModelRecord("cifar10-quick", 2), ["a" * padding, "b"], PREPROCESS)
        save_checkpoint(path, model.state_dict(), metadata)
        header_length = int.from_bytes(path.read_bytes()[:8], "little")
        if header_length % modulus == wanted:
            break
        padding += (wanted - header_length) % modulus
    assert path.read_bytes().startswith(opening)
    assert load_checkpoint(path).classes == ["a" * padding, "b"]


def test_run_folder_and_sidecar_paths_resolve_to_the_weights(saved, tmp_path):
    _, path = saved
    assert resolve_checkpoint_path(tmp_path) == path
    assert resolve_checkpoint_path(path.with_suffix(".json")) == path
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint"):
        resolve_checkpoint_path(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint_path(tmp_path / "missing.safetensors")


def test_weights_for_another_shape_are_a_clear_error(saved):
    _, path = saved
    checkpoint = load_checkpoint(path)
    checkpoint.metadata["model"]["num_classes"] = 5
    with pytest.raises(UserError, match="weights do not fit model cifar10-quick"):
        build_model(checkpoint)


def test_write_failure_keeps_the_previous_checkpoint(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()
    import visionfit.engine.checkpoint_file as module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is kept"):
        save_checkpoint(path, model.state_dict(), load_checkpoint(path).metadata)
    assert path.read_bytes() == before
    assert sorted(item.name for item in path.parent.iterdir()) == ["best.json", "best.safetensors"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("kind", ["raw pickle", "torch.save zip"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.safetensors"
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    else:
        torch.save({"weights": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UserError, match="PyTorch pickle"):
        load_checkpoint(path)
    with pytest.raises(UserError):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b'{"not": "weights"}', b"random bytes \xff\xfe" * 20])
def test_files_of_the_wrong_format_are_refused(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_safetensors_without_visionfit_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="without visionfit metadata"):
        load_checkpoint(path)
