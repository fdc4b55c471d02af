"""Label issues of multi-label data (a set of classes per picture): confident learning applied to
each class on its own, as a binary problem — the picture shows the class (1) or not (0), with
probabilities [1 - p, p] from the class's own sigmoid — the one-vs-rest reduction cleanlab's
`multilabel_classification.filter.find_label_issues` makes (the tests check that we agree with it;
cleanlab is AGPL-3.0 and never imported here).

A picture is flagged with the classes whose presence or absence looks wrong: "likely also" a class
it is not labelled with, "likely not" one it is; its suggested label set is the given set with those
classes turned over. Its score is the model's confidence against the worst of them.
"""

from __future__ import annotations

import numpy as np

from visionfit.doctor.checks import LABEL, Evidence, Issue
from visionfit.doctor.confident import prune_by_noise_rate


def class_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(items, classes) booleans: True where the picture's given presence (1) or absence (0) of the
    class is likely wrong, by confident learning on that class alone."""
    labels = np.asarray(labels, dtype=np.int64)
    flagged = np.zeros(labels.shape, dtype=bool)
    for index in range(labels.shape[1]):
        shown = np.clip(probabilities[:, index], 0.0, 1.0)
        flagged[:, index] = prune_by_noise_rate(labels[:, index], np.stack([1 - shown, shown], axis=1))
    return flagged


def class_self_confidence(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(items, classes): the probability of each given 0 or 1 (p when labelled, 1 - p when not)."""
    return np.where(labels == 1, probabilities, 1 - probabilities)


def label_set_issues(evidence: Evidence, usable: np.ndarray, kind: str) -> list[Issue]:
    """One issue per picture with a likely wrong class (readable pictures only), naming the classes
    it likely also shows and those it likely does not."""
    assert evidence.probabilities is not None
    collection = evidence.collection
    labels, probabilities = collection.labels, evidence.probabilities
    flagged = np.zeros(labels.shape, dtype=bool)
    flagged[usable] = class_label_issues(labels[usable], probabilities[usable])
    confidence = class_self_confidence(labels, probabilities)
    issues = []
    for item in np.flatnonzero(flagged.any(axis=1)):
        wrong = np.flatnonzero(flagged[item])
        given = labels[item] == 1
        also = [int(index) for index in wrong if not given[index]]
        not_shown = [int(index) for index in wrong if given[index]]
        suggested = tuple(int(index) for index in np.flatnonzero(given ^ flagged[item]))
        parts = [f"given: {collection.label_name(int(item))}"]
        if also:
            parts.append(f"likely also: {collection.set_name(also)}")
        if not_shown:
            parts.append(f"likely not: {collection.set_name(not_shown)}")
        worst = float(confidence[item, wrong].min())
        issues.append(Issue(int(item), kind, 1 - worst, LABEL, suggested=suggested, detail="; ".join(parts)))
    return issues


def label_agreement(evidence: Evidence, usable: np.ndarray) -> float:
    """The share of the usable pictures' (picture, class) labels the model agrees with (p > 0.5)."""
    assert evidence.probabilities is not None
    if not usable.any():
        return 0.0
    predicted = evidence.probabilities[usable] > 0.5
    return float((predicted == (evidence.collection.labels[usable] == 1)).mean())
