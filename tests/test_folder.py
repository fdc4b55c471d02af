from pathlib import Path

import pytest

from conftest import make_image
from visionfit.data import load_data
from visionfit.data.folder import load_folder, stratified_split
from visionfit.data.samples import FileSamples
from visionfit.errors import UserError


def test_classes_are_sorted_and_split_is_stratified_and_seeded(folder_dataset):
    classes, train, test, _ = load_folder(folder_dataset, 0.25, seed=1)
    assert classes == ["apple", "grape", "lime"]
    assert len(train) == 18 and len(test) == 6
    assert [test.labels.count(label) for label in range(3)] == [2, 2, 2]
    assert not set(train.paths) & set(test.paths)
    again = load_folder(folder_dataset, 0.25, seed=1)
    assert again[2].paths == test.paths
    other = load_folder(folder_dataset, 0.25, seed=2)
    assert other[2].paths != test.paths


def test_train_and_val_subfolders_are_used(split_dataset):
    classes, train, test, where = load_folder(split_dataset, 0.1, seed=0)
    assert classes == ["apple", "grape", "lime"]
    assert len(train) == 24 and len(test) == 12
    assert all("/val/" in str(path) for path in test.paths)
    assert "train/ and val/" in where


def test_test_folder_is_used_when_there_is_no_val(split_dataset):
    (split_dataset / "val").rename(split_dataset / "test")
    _, _, test, _ = load_folder(split_dataset, 0.1, seed=0)
    assert all("/test/" in str(path) for path in test.paths)


def test_val_may_miss_a_class_but_not_add_one(split_dataset):
    for path in (split_dataset / "val" / "lime").iterdir():
        path.unlink()
    (split_dataset / "val" / "lime").rmdir()
    classes, _, test, _ = load_folder(split_dataset, 0.1, seed=0)
    assert classes == ["apple", "grape", "lime"] and set(test.labels) == {0, 1}
    make_image(split_dataset / "val" / "kiwi" / "0.png", (0, 0, 0))
    with pytest.raises(UserError, match="kiwi"):
        load_folder(split_dataset, 0.1, seed=0)


def test_hidden_folders_and_non_images_are_ignored(folder_dataset):
    make_image(folder_dataset / ".git" / "x.png", (0, 0, 0))
    make_image(folder_dataset / "apple" / ".hidden.png", (0, 0, 0))
    (folder_dataset / "apple" / "notes.txt").write_text("not an image")
    (folder_dataset / "README.md").write_text("a file at the top")
    make_image(folder_dataset / "apple" / "nested" / "deep.png", (200, 0, 0))
    classes, train, test, _ = load_folder(folder_dataset, 0.25, seed=0)
    assert classes == ["apple", "grape", "lime"]
    names = {path.name for path in train.paths + test.paths}
    assert "deep.png" in names and ".hidden.png" not in names and "notes.txt" not in names
    assert len(train) + len(test) == 25


def test_empty_class_folder_is_a_user_error(folder_dataset):
    (folder_dataset / "empty").mkdir()
    (folder_dataset / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="class folder .*empty has no images"):
        load_folder(folder_dataset, 0.1, seed=0)


def test_symlink_loops_do_not_hang(folder_dataset):
    (folder_dataset / "apple" / "loop").symlink_to(folder_dataset / "apple")
    _, train, test, _ = load_folder(folder_dataset, 0.25, seed=0)
    assert len(train) + len(test) == 24


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is not a folder"),
        (lambda root: root.mkdir(), "has no class folders"),
    ],
)
def test_bad_data_dirs(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UserError, match=message):
        load_folder(root, 0.1, seed=0)


def test_a_class_with_one_image_stays_in_training():
    samples = FileSamples([Path(f"{index}.png") for index in range(5)], [0, 0, 0, 0, 1])
    train, test = stratified_split(samples, 2, 0.5, seed=0)
    assert train.labels.count(1) == 1 and test.labels.count(0) == 2


def test_default_dataset_reads_a_class_folder_data_dir(folder_dataset, visionfit_messages):
    messages = visionfit_messages
    data = load_data(None, str(folder_dataset))
    assert data.dataset == "folder" and data.classes == ["apple", "grape", "lime"]
    assert "reading it as --dataset folder" in messages[0]
