"""`visionfit doctor` on data as train reads it: label files (one or several labels per picture),
every split (train, val, test) with copies across any two of them counted as leaks, and multi-label
label issues per class — verified against cleanlab's multi-label filter (AGPL-3.0: a test-only
dependency) on the same probabilities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, make_folder_dataset, make_image, read_issues, tree_digest
from visionfit.cli import main

pytest.importorskip("imagehash")
pytest.importorskip("sklearn")


def planted_label_sets(seed: int, items: int = 1500, classes: int = 5, flips: float = 0.04):
    """Sigmoid probabilities of a decent multi-label classifier of the true sets, given sets with
    `flips` of the (picture, class) labels turned over, and where they were turned."""
    rng = np.random.default_rng(seed)
    true = (rng.random((items, classes)) < rng.uniform(0.1, 0.5, classes)).astype(np.int64)
    logits = rng.normal(0, 1.2, (items, classes)) + np.where(true == 1, 2.0, -2.0)
    probabilities = 1 / (1 + np.exp(-logits))
    flipped = rng.random((items, classes)) < flips
    labels = np.where(flipped, 1 - true, true)
    return labels, probabilities, flipped


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_label_issues_agree_with_cleanlab(seed):
    multilabel_filter = pytest.importorskip("cleanlab.multilabel_classification.filter")
    from visionfit.doctor.multilabel import class_label_issues

    labels, probabilities, flipped = planted_label_sets(seed)
    ours = class_label_issues(labels, probabilities)
    as_lists = [list(np.flatnonzero(row)) for row in labels]
    # n_jobs=1: cleanlab's default forks a Pool after torch has started threads (a child can hang).
    theirs = multilabel_filter.find_label_issues(as_lists, probabilities, n_jobs=1)
    per_class = np.asarray(
        multilabel_filter.find_multilabel_issues_per_class(as_lists, probabilities, n_jobs=1)
    )
    per_class = per_class.T if per_class.shape != ours.shape else per_class
    flagged = ours.any(axis=1)
    assert (flagged & theirs).sum() / (flagged | theirs).sum() >= 0.97
    assert (ours & per_class).sum() / (ours | per_class).sum() >= 0.97
    # The planted flips are found, per class, and few others.
    precision = (ours & flipped).sum() / ours.sum()
    recall = (ours & flipped).sum() / flipped.sum()
    assert precision > 0.7 and recall > 0.7, (precision, recall)


def test_a_flagged_picture_names_the_classes_it_likely_also_shows_and_not():
    from visionfit.doctor.checks import Evidence, Settings
    from visionfit.doctor.collection import Collection
    from visionfit.doctor.facts import Facts
    from visionfit.doctor.multilabel import label_set_issues

    rng = np.random.default_rng(0)
    classes = ["beach", "city", "sunset"]
    true = (rng.random((300, 3)) < 0.4).astype(np.int64)
    true[true.sum(axis=1) == 0, 0] = 1
    probabilities = np.clip(np.where(true == 1, 0.9, 0.1) + rng.normal(0, 0.05, true.shape), 0.01, 0.99)
    labels = true.copy()
    labels[0] = [1, 1, 0]  # truly beach and sunset: given beach and city
    probabilities[0] = [0.95, 0.03, 0.97]
    collection = Collection(classes, ["train"] * 300, list(range(300)), [None] * 300, labels, {})
    facts = Facts({"error": np.array([""] * 300, dtype=object)})
    evidence = Evidence(collection, facts, Settings(), probabilities=probabilities)
    issues = {issue.item: issue for issue in label_set_issues(evidence, np.arange(300), "label_issue")}
    first = issues[0]
    assert first.detail == "given: beach;city; likely also: sunset; likely not: city"
    assert collection.label_text(first.suggested) == "beach;sunset"
    assert first.score == pytest.approx(0.97)
    assert len(issues) < 10  # the rest agree with the model


@pytest.fixture
def multilabel_files(tmp_path: Path) -> Path:
    """Square colour pictures labelled with their colour and, every other one, `dark`; a split
    column makes train, val and test rows. Planted: a picture copied from train into val under
    another label set (a conflicting leak), and again into test."""
    root = tmp_path / "tiny"
    rows = [("file", "labels", "split")]
    for class_index, (name, color) in enumerate(COLORS.items()):
        for index in range(10):
            dark = index % 2 == 1
            shade = tuple(value // 3 for value in color) if dark else color
            make_image(root / name / f"{index}.png", shade, size=(32, 32), seed=class_index * 20 + index)
            split = "val" if index in (8, 9) else "test" if index == 7 else "train"
            rows.append((f"{name}/{index}.png", f"{name};dark" if dark else name, split))
    (root / "copies").mkdir()
    (root / "copies" / "in_val.png").write_bytes((root / "apple" / "0.png").read_bytes())
    (root / "copies" / "in_test.png").write_bytes((root / "apple" / "0.png").read_bytes())
    rows += [("copies/in_val.png", "grape;dark", "val"), ("copies/in_test.png", "apple", "test")]
    with open(root / "tiny.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(rows)
    return root


def test_doctor_checks_a_multilabel_label_file_with_quick_models(capsys, multilabel_files, tmp_path):
    before = tree_digest(multilabel_files)
    report = tmp_path / "report"
    arguments = ["--labels", str(multilabel_files / "tiny.csv"), "--folds", "2", "--epochs", "1"]
    code = main(["doctor", *arguments, "--out", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert tree_digest(multilabel_files) == before  # the label files of the folds live in the report
    issues = read_issues(report)
    first = issues[0]  # the copy under another label set, across splits, comes first
    assert first["kind"] == "exact_duplicate" and first["file"].endswith("in_val.png")
    assert first["split"] == "val" and first["given_label"] == "dark;grape"
    assert (
        "across splits (train -> val)" in first["detail"]
        and "conflicting labels (apple vs dark;grape)" in first["detail"]
    )
    test_copy = next(row for row in issues if row["file"].endswith("in_test.png"))
    assert test_copy["split"] == "test" and "across splits (train -> test)" in test_copy["detail"]
    assert "conflicting labels" not in test_copy["detail"]  # the same set: a leak, not a conflict
    summary = json.loads((report / "report.json").read_text())
    assert summary["items"] == 32  # every row of every split, the test rows set aside by train too
    assert summary["kinds"]["label_issue"]["ran"] and "out-of-sample" in summary["probabilities"]
    assert "labels: apple 7, dark 9, grape 7, lime 7" in summary["kinds"]["class_imbalance"]["summary"]
    for row in (row for row in issues if row["kind"] == "label_issue"):
        assert row["given_label"] and row["detail"].startswith("given: ")
    fold_labels = (report / "folds" / "labels0.csv").read_text().splitlines()
    assert fold_labels[0] == "file,labels" and Path(fold_labels[1].split(",")[0]).is_absolute()
    assert "label_issue:" in out and "each picture, each class" in out
    # A model's features instead: one K-fold logistic regression per class gives the probabilities.
    checkpoint = report / "folds" / "runs" / "fold0"
    code = main(["doctor", *arguments[:2], "--model", str(checkpoint), "--out", str(tmp_path / "r2")])
    assert code == 0 and tree_digest(multilabel_files) == before
    summary = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert "logistic regression" in summary["probabilities"] and summary["kinds"]["label_issue"]["ran"]


def test_a_malformed_label_file_is_trains_one_line_and_nothing_is_written(capsys, tmp_path):
    make_image(tmp_path / "a.png", (200, 10, 10))
    (tmp_path / "bad.csv").write_text("file,labels\na.png,red\nmissing.png,blue\n")
    report = tmp_path / "report"
    code = main(["doctor", "--labels", str(tmp_path / "bad.csv"), "--out", str(report)])
    err = capsys.readouterr().err
    assert code == 2
    assert "a file that is not there" in err and len(err.strip().splitlines()) == 1
    assert not report.exists()
    code = main(["doctor", "--task", "multilabel", "--out", str(report)])
    assert code == 2 and "--task multilabel needs --labels FILE" in capsys.readouterr().err


def test_three_split_folders_and_val_fraction_are_checked_as_three_splits(capsys, tmp_path):
    from visionfit.data.registry import SplitShares, load_data
    from visionfit.doctor.collection import collect

    flat = make_folder_dataset(tmp_path / "flat", per_class=10)
    held = collect(load_data("folder", str(flat), shares=SplitShares(0.2, 0.25, seed=1)))
    counts = {split: held.splits.count(split) for split in ("train", "val", "test")}
    assert counts == {"train": 18, "val": 6, "test": 6}
    root = make_folder_dataset(tmp_path / "three", per_class=6, split=True)
    (root / "test" / "lime").mkdir(parents=True)
    make_image(root / "test" / "lime" / "new.png", (40, 200, 60), seed=999)
    # A validation picture copied into test under another class: a leak between val and test.
    (root / "test" / "lime" / "from_val.png").write_bytes((root / "val" / "apple" / "0.png").read_bytes())
    for name in COLORS:
        (root / "test" / name).mkdir(parents=True, exist_ok=True)
        make_image(root / "test" / name / "own.png", COLORS[name], seed=500 + len(name))
    report = tmp_path / "report"
    code = main(["doctor", "--data-dir", str(root), "--no-model", "--out", str(report), "--fail-on", "leak"])
    capsys.readouterr()
    assert code == 1  # the leak fails --fail-on leak
    first = read_issues(report)[0]
    assert first["file"].endswith("test/lime/from_val.png") and first["split"] == "test"
    assert (
        "across splits (val -> test)" in first["detail"]
        and "conflicting labels (apple vs lime)" in first["detail"]
    )


def test_train_exclude_leaves_listed_files_out_of_the_validation_split_too(tmp_path):
    from visionfit.data.exclusion import exclude_files
    from visionfit.data.registry import SplitShares, load_data

    root = make_folder_dataset(tmp_path / "flat", per_class=10)
    data = load_data("folder", str(root), shares=SplitShares(0.2, 0.25, seed=1))
    assert data.val is not None
    listed = [data.val.files()[0], data.train.files()[0]]
    with open(tmp_path / "issues.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("file", "kind"), *((str(file), "near_duplicate") for file in listed)])
    kept, found = exclude_files(data, tmp_path / "issues.csv")
    assert len(found) == 2 and len(kept.val) == len(data.val) - 1 and len(kept.train) == len(data.train) - 1
    assert listed[0] not in kept.val.files()


def test_doctor_takes_trains_data_options_with_trains_help(capsys):
    from visionfit.config.fields import DATA_OPTIONS

    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    doctor_help = " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = " ".join(capsys.readouterr().out.split())
    for name in DATA_OPTIONS:
        flag = "--" + name.replace("_", "-")
        assert flag in doctor_help
        # The same help text as train's, whatever argparse wraps: the words after the flag's line.
        words = train_help.split(flag, 1)[1].split("--", 1)[0].split()[1:8]
        assert " ".join(words) in doctor_help, flag
