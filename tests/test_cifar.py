import functools
import hashlib
import http.server
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_cifar_batches
from visionfit.data import cifar, cifar_files, load_data
from visionfit.errors import UserError


def test_reads_a_batches_folder_that_is_not_the_official_bytes(cifar_batches):
    train, test = cifar_files.read_cifar10(cifar_batches)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == [index % 10 for index in range(20)]
    with open(cifar_batches / "data_batch_1", "rb") as file:
        first = pickle.load(file)["data"][0]
    assert torch.equal(train.images[0].reshape(-1), torch.from_numpy(first))


@pytest.mark.parametrize("where", ["folder itself", "its parent"])
def test_data_dir_may_be_the_folder_or_its_parent(cifar_batches, where):
    data_dir = cifar_batches if where == "folder itself" else cifar_batches.parent
    data = load_data("cifar10", str(data_dir))
    assert data.dataset == "cifar10" and len(data.train) == 100 and len(data.test) == 20
    assert data.classes[0] == "airplane" and data.image_side == 32


class Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_batch_file_that_would_run_code_is_refused(cifar_batches, tmp_path):
    marker = tmp_path / "pwned"
    with open(cifar_batches / "data_batch_3", "wb") as file:
        pickle.dump({"data": Payload(str(marker)), "labels": []}, file)
    with pytest.raises(UserError, match="data_batch_3 is not a CIFAR-10 batch file"):
        cifar_files.read_cifar10(cifar_batches)
    assert not marker.exists()


def test_labels_outside_ten_classes_are_refused(tmp_path):
    folder = write_cifar_batches(tmp_path / "c")
    with open(folder / "test_batch", "wb") as file:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 42]}, file)
    with pytest.raises(UserError, match="labels outside 0..9"):
        cifar_files.read_cifar10(folder)


@pytest.fixture
def archive_server(tmp_path, monkeypatch):
    """A local HTTP server offering a small cifar-10-python.tar.gz built here."""
    source = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py", per_batch=10)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "VISIONFIT_CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    )
    monkeypatch.setattr(cifar_files, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    yield archive
    server.shutdown()


def test_download_from_a_local_server_unpacks_into_the_cache(archive_server, tmp_path):
    data = load_data("cifar10", None)
    folder = Path(os.environ["VISIONFIT_CACHE"]) / "cifar10" / "cifar-10-batches-py"
    assert (folder / "test_batch").is_file()
    assert len(data.train) == 50 and len(data.test) == 10
    assert not (folder.parent / "cifar-10-python.tar.gz").exists()  # the archive is not kept
    assert load_data("cifar10", None).train.labels.tolist() == data.train.labels.tolist()


def test_download_into_an_explicit_data_dir(archive_server, tmp_path):
    load_data("cifar10", str(tmp_path / "mine"))
    assert cifar.find_cifar10(tmp_path / "mine") == tmp_path / "mine" / "cifar-10-batches-py"


def test_a_corrupted_download_fails_its_md5_and_is_removed(archive_server, monkeypatch):
    monkeypatch.setattr(cifar_files, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(UserError, match="md5"):
        load_data("cifar10", None)
    assert not list(cifar.default_cifar10_root().glob("*.tar.gz"))


def test_no_network_with_explicit_cifar10_says_how_to_use_a_local_copy():
    with pytest.raises(UserError) as caught:
        load_data("cifar10", None)
    message = str(caught.value)
    assert "cannot download CIFAR-10" in message and "--data-dir" in message
    assert "\n" not in message


def test_no_network_without_dataset_falls_back_to_the_bundled_sample(visionfit_messages):
    messages = visionfit_messages
    data = load_data(None, None)
    assert data.dataset == "cifar10-sample"
    assert len(messages) == 1 and "bundled cifar10-sample" in messages[0]


def test_bundled_sample_is_small_balanced_and_real():
    assert cifar_files.SAMPLE_FILE.stat().st_size <= 6_000_000
    data = load_data("cifar10-sample", None)
    assert data.train.images.shape == (5000, 3, 32, 32) and data.test.images.shape == (1000, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [500] * 10
    assert torch.bincount(data.test.labels).tolist() == [100] * 10
    assert data.train.images.float().std() > 30  # photographs, not blank or constant images
