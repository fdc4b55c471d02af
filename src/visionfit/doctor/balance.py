"""Class imbalance: the training pictures per class, the largest-to-smallest ratio, and the classes
below a floor. One issue per class at fault (a whole class, no file). For multi-label data a
picture counts for every class it shows (the counts of each label)."""

from __future__ import annotations

import numpy as np

from visionfit.doctor.checks import ODD, Check, Evidence, Issue, register_check


def class_counts(evidence: Evidence, split: str = "train") -> np.ndarray:
    collection = evidence.collection
    labels = collection.labels[collection.items_of(split)]
    if collection.multilabel:
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels, minlength=len(collection.classes))


@register_check
class ClassImbalance(Check):
    kind = "class_imbalance"
    description = "classes with too few training pictures, or far fewer than the largest class"

    def find(self, evidence: Evidence) -> list[Issue]:
        counts = class_counts(evidence)
        settings = evidence.settings
        largest = max(int(counts.max()), 1)
        issues = []
        for label, count in enumerate(counts):
            ratio = largest / max(int(count), 1)
            reasons = []
            if count < settings.class_floor:
                reasons.append(f"below the floor of {settings.class_floor}")
            if ratio > settings.imbalance_ratio:
                reasons.append(f"the largest class has {ratio:.1f}x as many")
            if reasons:
                detail = f"{count} training pictures: {', '.join(reasons)}"
                score = float(1 - count / largest)
                issues.append(Issue(None, self.kind, score, ODD, detail=detail, label=label))
        return issues

    def summarize(self, issues: list[Issue], evidence: Evidence) -> str:
        counts = class_counts(evidence)
        ratio = counts.max() / max(int(counts.min()), 1)
        summary = (
            f"{len(issues)} {self.description}; training pictures per class {int(counts.min())}"
            f"-{int(counts.max())} (ratio {ratio:.1f})"
        )
        if evidence.collection.multilabel:  # a set per picture: say each label's count
            classes = evidence.collection.classes
            summary += "; labels: " + ", ".join(
                f"{name} {count}" for name, count in zip(classes, counts, strict=True)
            )
        return summary
