"""Out-of-sample probabilities and features of multi-label data (a set of classes per picture): one
sigmoid per class, each picture's from a model that did not see its labels.

- Quick models: the pictures split into K folds (plain shuffled K-fold: no iterative
  stratification of label sets exists in visionfit yet), and for each fold visionfit's own `train`
  runs the multi-label task on a label file written for it under the report folder — the other
  folds' pictures by their absolute paths (nothing is copied or moved) with their class ids — and
  gives the probabilities and features of the held-out fold.
- `--model`: features from the model, probabilities from a K-fold logistic regression per class on
  them (one-vs-rest).

The per-class checks (`multilabel`) read these the way cleanlab's multi-label filter does.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visionfit.doctor.collection import Collection

if TYPE_CHECKING:
    from visionfit.doctor.options import DoctorOptions
    from visionfit.inference import InferenceModel

# evidence.features_and_probabilities: (model, collection, items) -> (features, probabilities)
Predict = Callable[["InferenceModel", Collection, np.ndarray], tuple[np.ndarray, np.ndarray]]

logger = logging.getLogger(__name__)
IDS_SEPARATOR = ";"  # between the class ids of a fold's label file


def label_set_folds(count: int, folds: int, seed: int) -> np.ndarray:
    """A fold number for each of `count` pictures: shuffled K-fold with `seed`."""
    from sklearn.model_selection import KFold

    assignment = np.zeros(count, dtype=np.int64)
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(count))):
        assignment[held_out] = fold
    return assignment


def write_fold_labels(collection: Collection, items: np.ndarray, path: Path) -> None:
    """A label file of `items`: each picture's absolute path and its class ids ("0;3")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "labels"])
        for item in items:
            ids = IDS_SEPARATOR.join(str(index) for index in np.flatnonzero(collection.labels[item]))
            writer.writerow([str(collection.paths[item]), ids])


def class_columns(model_classes: list[str]) -> list[int]:
    """The collection's class index of each of a fold model's classes (their ids as names)."""
    return [int(name) for name in model_classes]


def multilabel_quick_evidence(
    collection: Collection, usable: np.ndarray, options: DoctorOptions, *, side: int, predict: Predict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities (items, classes), features and each item's fold, from K quick multi-label
    models (input side `side`), each trained on the other folds; `predict` reads a model's features
    and probabilities of some items. A class no picture of a fold's training part shows gets
    probability 0 in that fold (its training prior)."""
    from visionfit.doctor.options import quick_run
    from visionfit.inference import load_for_inference
    from visionfit.training import train

    count, classes = len(collection), len(collection.classes)
    probabilities = np.zeros((count, classes))
    features: np.ndarray | None = None
    folds = label_set_folds(len(usable), options.folds, options.seed)
    groups = np.full(count, -1, dtype=np.int64)
    groups[usable] = folds
    work = options.output / "folds"
    for fold in range(options.folds):
        held_out = folds == fold
        logger.info(
            f"doctor: quick multi-label model {fold + 1}/{options.folds} "
            f"({(~held_out).sum():,} pictures to learn from)"
        )
        label_file = work / f"labels{fold}.csv"
        write_fold_labels(collection, usable[~held_out], label_file)
        settings = quick_run(options, side, work, fold)
        result = train(labels=str(label_file), label_separator=IDS_SEPARATOR, task="multilabel", **settings)
        model = load_for_inference(result.last_checkpoint, device=options.device)  # its training's TTA
        items = usable[held_out]
        fold_features, fold_probabilities = predict(model, collection, items)
        probabilities[np.ix_(items, class_columns(model.classes))] = fold_probabilities
        if features is None:
            features = np.zeros((count, fold_features.shape[1]))
        features[items] = fold_features  # comparable only within the fold (`groups`)
    return probabilities, features if features is not None else np.zeros((count, 1)), groups


def per_class_regression(features: np.ndarray, labels: np.ndarray, folds: int) -> np.ndarray:
    """(items, classes) out-of-fold probabilities: one logistic regression per class on `features`
    (K-fold); a class that a fold's training part shows always or never gets that constant."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros(labels.shape, dtype=np.float64)
    assignment = label_set_folds(len(labels), folds, 0)
    for fold in range(folds):
        held_out, kept = assignment == fold, assignment != fold
        for index in range(labels.shape[1]):
            target = labels[kept, index]
            if target.min() == target.max():
                probabilities[held_out, index] = float(target[0]) if len(target) else 0.0
                continue
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
            classifier.fit(features[kept], target)
            probabilities[held_out, index] = classifier.predict_proba(features[held_out])[:, 1]
    return probabilities
