"""Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021) in numpy, written from the paper; cleanlab verifies it in the tests
(cleanlab is AGPL-3.0, so it is never imported here).

From out-of-sample predicted probabilities `probabilities` (items, classes) and the given labels:
per-class thresholds t_j = the mean probability of class j over the items labelled j; an item's
confidently-predicted class is the argmax among the classes above their threshold; the confident
joint C[i][j] counts items labelled i whose confidently-predicted class is j.

`find_label_issues` (single-label data): as many items as the confident joint's off-diagonal holds
(items whose confidently-predicted class is not their label and whose prediction is not their
label either: cleanlab's `num_label_issues`), those with the lowest probability of their given
label (self-confidence; cleanlab's `filter_by="low_self_confidence"`). `prune_by_noise_rate` (the
paper's PBNR, cleanlab's default; multi-label data, class by class): the joint calibrated to the
label counts estimates how many items labelled i truly are j, and that many items labelled i are
flagged for each (i, j), those with the largest margin p_j - p_i.

Why not PBNR for single labels: with a judge well short of perfect (the quick models on CIFAR-10,
about 80% right) the calibrated joint counts the judge's own confusions (cat and dog) as label
errors. On CIFAR-10 with 5% of labels flipped (benchmarks/doctor_labels.py, the same
probabilities) PBNR flagged 4,925 pictures at 38% precision and 84% recall; the self-confidence
ranking flagged 3,108 at 61% precision and 85% recall; with today's quick models, 4,081 at 46%
against 2,580 at 73% (benchmarks/RESULTS.md). Items whose prediction is their given label are
never flagged.
"""

from __future__ import annotations

import numpy as np


def confident_joint(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The calibrated confident joint (classes, classes) as whole counts: rows given, columns true."""
    classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=classes)
    guess = confident_classes(labels, probabilities)
    kept = guess >= 0
    joint = np.zeros((classes, classes), dtype=np.float64)
    np.add.at(joint, (labels[kept], guess[kept]), 1)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    # Calibrate: each row sums to its label count, the whole to the number of items.
    joint = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-12) * counts[:, None]
    joint = joint / max(joint.sum(), 1e-12) * counts.sum()
    return round_keeping_row_sums(joint)


def confident_classes(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each item's confidently-predicted class: the only class above its threshold, the most
    probable one when several are, -1 when none is."""
    classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=classes)
    thresholds = np.array(
        [probabilities[labels == label, label].mean() if counts[label] else 1.0 for label in range(classes)]
    )
    confident = probabilities >= thresholds - 1e-6
    above = confident.sum(axis=1)
    guess = np.where(above > 1, probabilities.argmax(axis=1), confident.argmax(axis=1))
    return np.where(above > 0, guess, -1)


def predicted_classes(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The most probable class, the given label winning ties (within 1e-6)."""
    nudged = probabilities.copy()
    nudged[np.arange(len(labels)), labels] += 1e-6
    return nudged.argmax(axis=1)


def round_keeping_row_sums(matrix: np.ndarray) -> np.ndarray:
    """Whole numbers close to `matrix` whose rows keep their (rounded) sums: the largest remainders
    round up."""
    floors = np.floor(matrix)
    result = floors.astype(np.int64)
    for row in range(matrix.shape[0]):
        missing = round(float(matrix[row].sum())) - int(floors[row].sum())
        if missing > 0:
            order = np.argsort(-(matrix[row] - floors[row]), kind="stable")
            result[row, order[:missing]] += 1
    return result


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """A boolean mask of the items whose given label is likely wrong: the confident joint's count of
    them, taken in order of lowest self-confidence."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = predicted_classes(labels, probabilities)
    guess = confident_classes(labels, probabilities)
    count = int(((guess >= 0) & (guess != labels) & (predicted != labels)).sum())
    order = np.argsort(self_confidence(labels, probabilities), kind="stable")
    mask = np.zeros(len(labels), dtype=bool)
    mask[order[:count]] = True
    return mask & (predicted != labels)


def prune_by_noise_rate(labels: np.ndarray, probabilities: np.ndarray, min_per_class: int = 1) -> np.ndarray:
    """A boolean mask of the items whose given label is likely wrong (prune by noise rate)."""
    labels = np.asarray(labels, dtype=np.int64)
    joint = confident_joint(labels, probabilities).astype(np.float64)
    classes = joint.shape[0]
    # Keep at least `min_per_class` items per class: lift the diagonal and take what it gained
    # evenly from that label's non-zero off-diagonal counts.
    diagonal = np.maximum(joint.diagonal(), min_per_class)
    lifted = diagonal - joint.diagonal()
    off = joint.copy()
    np.fill_diagonal(off, 0)
    nonzero = np.maximum(np.count_nonzero(off, axis=1), 1)
    off = np.maximum(off - (lifted / nonzero)[:, None] * (off > 0), 0)
    np.fill_diagonal(off, diagonal)
    prune = round_keeping_row_sums(off)
    predicted = predicted_classes(labels, probabilities)
    mask = np.zeros(len(labels), dtype=bool)
    for given in range(classes):
        members = np.flatnonzero(labels == given)
        for true in range(classes):
            count = int(prune[given, true]) if true != given else 0
            if count <= 0 or not len(members):
                continue
            margin = probabilities[members, true] - probabilities[members, given]
            mask[members[np.argsort(margin, kind="stable")[-count:]]] = True
    mask &= predicted != labels
    return mask


def self_confidence(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each item's probability of its given label: the label-quality score issues are ranked by."""
    return probabilities[np.arange(len(labels)), labels]
