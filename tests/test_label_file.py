"""Label files (--labels): the formats and columns they come in, the splits they name, and one
line (exit 2, no run folder) for each problem a user can fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import COLORS, make_image
from visionfit.cli import main
from visionfit.data import load_data
from visionfit.data.label_options import LabelFileOptions
from visionfit.data.samples import FileSamples, MultiLabelSamples
from visionfit.errors import UserError

NAMES = list(COLORS)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/<class>/<n>.png, six per class, and a not-an-image file."""
    root = tmp_path_factory.mktemp("label_images")
    for class_index, (name, color) in enumerate(COLORS.items()):
        for index in range(6):
            make_image(root / name / f"{index}.png", color, seed=class_index * 10 + index)
    (root / "notes.txt").write_text("not an image")
    return root


def rows(with_split: bool = False) -> list[tuple[str, str, str]]:
    """(file, label, split) for every image: the first two of each class are val."""
    return [
        (f"{name}/{index}.png", name, "val" if with_split and index < 2 else "train")
        for name in NAMES
        for index in range(6)
    ]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_of(table: list[tuple[str, ...]], header: str = "file,label") -> str:
    return header + "\n" + "\n".join(",".join(row) for row in table) + "\n"


def load(labels: Path, data_dir: Path | None, **options) -> object:
    return load_data(
        None, str(data_dir) if data_dir else None, label_file=LabelFileOptions(str(labels), **options)
    )


def test_csv_with_one_label_column_gives_single_label_samples(images, tmp_path):
    labels = write(tmp_path / "labels.csv", csv_of([row[:2] for row in rows()]))
    data = load(labels, images)
    assert data.dataset == "labels" and data.task == "single" and data.classes == NAMES
    assert isinstance(data.train, FileSamples) and len(data.train) + len(data.test) == 18
    # stratified: every class keeps images on both sides
    assert set(data.test.label_tensor().tolist()) == {0, 1, 2}
    assert all(path.is_file() for path in data.train.files())


def test_split_column_chooses_the_held_out_rows(images, tmp_path):
    table = rows(with_split=True)
    labels = write(tmp_path / "labels.csv", csv_of(table, "image,category,split"))
    data = load(labels, images)
    held_out = {str(path.relative_to(images)) for path in data.test.files()}
    assert held_out == {file for file, _, split in table if split == "val"}


def test_tsv_json_lines_and_paths_relative_to_the_label_file(images, tmp_path):
    table = [row[:2] for row in rows()]
    tsv = write(images / "labels.tsv", "path\tclass\n" + "\n".join("\t".join(row) for row in table) + "\n")
    lines = "\n".join(json.dumps({"file": file, "labels": [label]}) for file, label in table)
    jsonl = write(images / "labels.jsonl", lines + "\n")
    for labels in (tsv, jsonl):
        data = load(labels, None)  # no --data-dir: relative to the file's folder
        assert data.classes == NAMES and len(data.train) + len(data.test) == 18


def test_several_labels_per_cell_make_a_multilabel_set(images, tmp_path):
    table = [
        (file, f"{label}|shiny" if index % 2 else label) for index, (file, label, _) in enumerate(rows())
    ]
    data = load(write(tmp_path / "labels.csv", csv_of(table)), images)
    assert data.task == "multilabel" and data.classes == [*NAMES, "shiny"]
    assert isinstance(data.train, MultiLabelSamples)
    matrix = data.train.label_tensor()
    assert matrix.shape == (len(data.train), 4) and set(matrix.sum(1).tolist()) == {1.0, 2.0}


def test_one_hot_columns_are_classes(images, tmp_path):
    header = "file," + ",".join(NAMES) + ",shiny"
    table = [
        (file, *("1" if name == label else "0" for name in NAMES), str(index % 2))
        for index, (file, label, _) in enumerate(rows())
    ]
    data = load(write(tmp_path / "onehot.csv", csv_of(table, header)), images)
    assert data.task == "multilabel" and data.classes == [*NAMES, "shiny"]


def test_numeric_ids_stay_names_or_take_class_names(images, tmp_path):
    table = [(file, str(NAMES.index(label) * 5)) for file, label, _ in rows()]
    labels = write(tmp_path / "ids.csv", csv_of(table))
    assert load(labels, images).classes == ["0", "5", "10"]
    table = [(file, str(NAMES.index(label))) for file, label, _ in rows()]
    labels = write(tmp_path / "ids.csv", csv_of(table))
    assert load(labels, images, class_names=("a", "b", "c")).classes == ["a", "b", "c"]


def test_headerless_file_and_column_overrides(images, tmp_path):
    table = [row[:2] for row in rows()]
    assert (
        load(write(tmp_path / "bare.csv", "\n".join(",".join(row) for row in table)), images).classes == NAMES
    )
    odd = write(tmp_path / "odd.csv", csv_of([(label, file) for file, label in table], "what,where"))
    data = load(odd, images, file_column="where", label_column="what")
    assert data.classes == NAMES


def test_test_labels_file_is_the_held_out_split(images, tmp_path):
    table = [row[:2] for row in rows()]
    train = write(tmp_path / "train.csv", csv_of(table[1::2]))
    test = write(tmp_path / "test.csv", csv_of(table[0::2]))
    data = load(train, images, test_labels=str(test))
    assert len(data.train) == 9 and len(data.test) == 9


def test_single_task_refuses_several_labels(images, tmp_path):
    table = [(file, f"{label};shiny") for file, label, _ in rows()]
    with pytest.raises(UserError, match="have several labels .* but --task is single"):
        load(write(tmp_path / "labels.csv", csv_of(table)), images, task="single")


def _table(mutate) -> str:
    table = [list(row) for row in rows(with_split=True)]
    mutate(table)
    return "file,label,split\n" + "\n".join(",".join(row) for row in table) + "\n"


def _set(row: int, column: int, value: str):
    def mutate(table):
        table[row][column] = value

    return mutate


def _splits_of(count: int, split: str):
    """The first `count` rows (apple's) moved to `split`."""

    def mutate(table):
        for row in table[:count]:
            row[2] = split

    return mutate


def _append(*row: str):
    return lambda table: table.append(list(row))


# (file name, content, extra flags, what the one line must say)
MALFORMED = [
    ("missing.csv", None, [], "does not exist"),
    ("empty.csv", "", [], "has no rows"),
    ("header_only.csv", "file,label\n", [], "has no rows"),
    ("latin1.csv", b"file,label\napple/0.png,caf\xe9\n", [], "not UTF-8"),
    ("ragged.csv", "file,label\napple/0.png,apple,extra\n", [], "more cells than the header"),
    ("no_file_column.csv", "what,label\nx,apple\n", [], "no column of image files"),
    ("which_label.csv", "file,colour,shape\napple/0.png,red,round\n", [], "cannot tell which column"),
    ("wrong_column.csv", _table(lambda table: None), ["--label-column", "kind"], "'kind' is not a column"),
    ("absent_file.csv", _table(_set(3, 0, "apple/99.png")), [], "1 row(s) that name a file that is not"),
    ("not_image.csv", _table(_set(3, 0, "notes.txt")), [], "that name no image file"),
    ("no_name.csv", _table(_set(3, 0, "")), [], "with no file name"),
    ("empty_label.csv", _table(_set(4, 1, "")), [], "with an empty label"),
    ("bad_split.csv", _table(_set(4, 2, "holdout")), [], "unknown split value"),
    ("twice.csv", _table(_append("apple/3.png", "grape", "train")), [], "again with different labels"),
    ("leak.csv", _table(_append("apple/0.png", "apple", "train")), [], "again in another split"),
    ("no_val_images.csv", _table(_splits_of(2, "train")), [], "no images in the val"),
    ("no_train_images.csv", _table(_splits_of(6, "val")), [], "no images in the train"),
    ("bad_json.jsonl", '{"file": "apple/0.png", "label": "apple"}\n[1, 2]\n', [], "not a JSON object"),
    ("bad_one_hot.csv", "file,apple,grape\napple/0.png,1,0\ngrape/0.png,0,2\n", [], "not 0 or 1"),
    ("unknown_name.csv", _table(lambda table: None), ["--class-names", "apple,grape"], "does not list"),
    (
        "id_out_of_range.csv",
        "file,label\napple/0.png,0\ngrape/0.png,7\n",
        ["--class-names", "a,b"],
        "outside 0..1",
    ),
    ("several_single.csv", _table(_set(2, 1, "apple;grape")), ["--task", "single"], "--task is single"),
    ("multilabel_without_file", None, ["--task", "multilabel", "--dataset", "cifar10"], "needs --labels"),
]


@pytest.mark.parametrize(
    ("name", "content", "flags", "message"), MALFORMED, ids=[case[0] for case in MALFORMED]
)
def test_malformed_label_file_is_one_line_exit_2_and_no_run_folder(
    capsys, images, tmp_path, name, content, flags, message
):
    labels = tmp_path / name
    if isinstance(content, bytes):
        labels.write_bytes(content)
    elif content is not None:
        labels.write_text(content, encoding="utf-8")
    runs = tmp_path / "runs"
    label_flags = [] if "--dataset" in flags else ["--labels", str(labels), "--data-dir", str(images)]
    code = main(["train", *label_flags, *flags, "--epochs", "1", "--run-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("visionfit: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not runs.exists()
