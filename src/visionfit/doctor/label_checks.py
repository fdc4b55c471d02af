"""Checks that need a model: likely label errors (confident learning on out-of-sample
probabilities; per class for multi-label data, `multilabel`) and outliers (distance to the nearest
neighbours in an embedding)."""

from __future__ import annotations

import numpy as np

from visionfit.doctor.checks import LABEL, PROPERTY, Check, Evidence, Issue, register_check
from visionfit.doctor.confident import find_label_issues, self_confidence
from visionfit.doctor.multilabel import label_agreement, label_set_issues

WEAK_JUDGE = 0.8  # below this agreement with the given labels, the summary warns
NEIGHBOURS = 10  # outlier score: mean distance to this many nearest neighbours


@register_check
class LabelIssue(Check):
    kind = "label_issue"
    description = "likely wrong labels (confident learning)"
    needs_model = True

    def find(self, evidence: Evidence) -> list[Issue]:
        if evidence.probabilities is None:
            return []
        labels, probabilities = evidence.collection.labels, evidence.probabilities
        usable = np.flatnonzero(evidence.facts.error == "")  # a broken file has no prediction
        if evidence.collection.multilabel:  # each class on its own, as a binary problem
            return label_set_issues(evidence, usable, self.kind)
        flagged = np.zeros(len(labels), dtype=bool)
        flagged[usable] = find_label_issues(labels[usable], probabilities[usable])
        quality = self_confidence(labels, probabilities)
        suggested = probabilities.argmax(axis=1)
        return [
            Issue(
                int(item),
                self.kind,
                float(1 - quality[item]),
                LABEL,
                suggested=int(suggested[item]),
                detail=f"p(given) {quality[item]:.2f}, p(suggested) {probabilities[item].max():.2f}",
            )
            for item in np.flatnonzero(flagged)
        ]

    def summarize(self, issues: list[Issue], evidence: Evidence) -> str:
        warning = (
            " (WARNING: in-sample probabilities, the model saw these labels)" if evidence.in_sample else ""
        )
        assert evidence.probabilities is not None
        usable = evidence.facts.error == ""
        if evidence.collection.multilabel:
            accuracy = label_agreement(evidence, usable)
            judge = f"; they agree with {accuracy:.1%} of the given labels (each picture, each class)"
        else:
            predicted = evidence.probabilities[usable].argmax(axis=1)
            labels = evidence.collection.labels[usable]
            accuracy = float((predicted == labels).mean()) if usable.any() else 0.0
            judge = f"; they agree with {accuracy:.1%} of the given labels"
        if accuracy < WEAK_JUDGE:
            judge += " (a weak judge: many flagged labels will be its own mistakes; look at the grid)"
        source = evidence.probability_source
        return f"{len(issues)} {self.description}; probabilities from {source}{warning}{judge}"


def outlier_scores(features: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Each item's mean cosine distance to its `neighbours` nearest other items."""
    from sklearn.neighbors import NearestNeighbors

    count = min(neighbours + 1, len(features))
    search = NearestNeighbors(n_neighbors=count, metric="cosine").fit(features)
    distances, _ = search.kneighbors(features)
    return distances[:, 1:].mean(axis=1)


@register_check
class Outlier(Check):
    kind = "outlier"
    description = "outliers (far from every other picture in the embedding)"
    needs_model = True

    def find(self, evidence: Evidence) -> list[Issue]:
        if evidence.features is None or len(evidence.features) < 3:
            return []
        groups = evidence.feature_groups
        if groups is None:
            groups = np.zeros(len(evidence.features), dtype=np.int64)
        scores = np.zeros(len(groups))
        for group in np.unique(groups[groups >= 0]):  # features of one model are compared together
            members = np.flatnonzero(groups == group)
            scores[members] = outlier_scores(evidence.features[members])
        share = evidence.settings.outlier_share
        count = max(1, round(share * len(scores)))
        worst = np.argsort(-scores, kind="stable")[:count]
        top = max(float(scores[worst[0]]), 1e-12)
        return [
            Issue(
                int(item),
                self.kind,
                float(scores[item] / top),
                PROPERTY,
                detail=f"kNN distance {scores[item]:.3f}",
            )
            for item in worst
        ]
