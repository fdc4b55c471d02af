"""The check registry: one `Check` class per kind of problem, registered by name.

Every check reads the same `Evidence` and returns rows of the same table (`Issue`), plus a
summary line; adding a kind is one class with `@register_check`. Checks that need a model's
out-of-sample probabilities or features say so (`needs_model`) and are skipped with `--no-model`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from visionfit.errors import UserError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

    from visionfit.doctor.collection import Collection
    from visionfit.doctor.facts import Facts

# Modules whose checks are built in; importing one registers its checks (in this order).
BUILTIN_CHECKS = (
    "visionfit.doctor.file_checks",
    "visionfit.doctor.properties",
    "visionfit.doctor.duplicates",
    "visionfit.doctor.balance",
    "visionfit.doctor.label_checks",
)
# Where a kind of issue comes in the list: the ones a user must see first, first.
LEAK_FIRST, BROKEN, LABEL, DUPLICATE, ODD, PROPERTY = 0, 10, 20, 30, 40, 50


@dataclass
class Issue:
    """One row of the issue table. `item` is None for issues of a whole class (imbalance)."""

    item: int | None
    kind: str
    score: float  # 0–1: how sure or how severe (higher: look at it first)
    priority: int  # its place in the list (lower first), then score
    # The label that fits better (label issues): a class, or a set of classes for multi-label data.
    suggested: int | tuple[int, ...] | None = None
    duplicate_of: int | None = None  # the item this one copies (duplicates)
    detail: str = ""
    label: int | None = None  # the class an issue of a whole class is about


@dataclass
class Evidence:
    """Everything the checks read, gathered once."""

    collection: Collection
    facts: Facts
    settings: Settings
    probabilities: np.ndarray | None = None  # out-of-sample (items, classes), or None
    probability_source: str = ""  # where they came from, said in the report
    # Where the features came from: source (model, pretrained or quick), model, and the weights.
    feature_source: dict[str, Any] = field(default_factory=dict)
    in_sample: bool = False  # True when the model saw these labels in training (memorised)
    features: np.ndarray | None = None  # (items, dimensions) embeddings, or None
    # Which model each item's features come from (one per fold); compared only within a group.
    feature_groups: np.ndarray | None = None


@dataclass
class Settings:
    """Thresholds of the checks (cleanvision's where it has one)."""

    # Perceptual hashes this many bits apart or fewer are near copies. 8, not 6: 5%-crops are 6 bits
    # apart at the median, so 6 missed a third of them (flowers and CIFAR alike), while 8 added 2
    # false pairs in CIFAR-10's 6,000-picture sample (benchmarks/RESULTS.md, doctor).
    near_duplicate_bits: int = 8
    class_floor: int = 10  # classes with fewer training pictures than this are flagged
    imbalance_ratio: float = 10.0  # largest class / smallest above this is flagged
    outlier_share: float = 0.01  # the share of items with the farthest neighbours called outliers
    thresholds: dict[str, float] = field(default_factory=dict)  # per-kind overrides


@dataclass
class CheckResult:
    kind: str
    issues: list[Issue]
    summary: str
    ran: bool = True


class Check:
    """One kind of problem. Subclasses set `kind`, `description`, and implement `find`."""

    kind: ClassVar[str]
    description: ClassVar[str]  # what an issue of this kind is, for the report and --help
    needs_model: ClassVar[bool] = False

    def find(self, evidence: Evidence) -> list[Issue]:
        raise NotImplementedError

    def summarize(self, issues: list[Issue], evidence: Evidence) -> str:
        return f"{len(issues)} {self.description}"

    def run(self, evidence: Evidence) -> CheckResult:
        issues = self.find(evidence)
        return CheckResult(self.kind, issues, self.summarize(issues, evidence))


_CHECKS: dict[str, type[Check]] = {}


def register_check(check: type[Check]) -> type[Check]:
    """Class decorator: register `check` under its `kind` (twice is an error)."""
    if check.kind in _CHECKS:
        raise ValueError(f"doctor check {check.kind!r} is registered twice")
    _CHECKS[check.kind] = check
    return check


def registered_checks() -> dict[str, type[Check]]:
    for module in BUILTIN_CHECKS:
        importlib.import_module(module)
    return _CHECKS


def check_names() -> tuple[str, ...]:
    """Every kind of issue doctor can report, in the order it checks them."""
    return tuple(registered_checks())


def get_check(kind: str) -> type[Check]:
    checks = registered_checks()
    if kind not in checks:
        raise UserError(
            f"unknown issue kind {kind!r}; choose from {', '.join(checks)}{did_you_mean(kind, checks)}"
        )
    return checks[kind]


def require_extra() -> None:
    """The permissive libraries doctor uses (the `doctor` extra), or one line saying how to get them."""
    try:
        import imagehash  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        raise UserError(f"visionfit doctor needs {error.name}: pip install 'visionfit[doctor]'") from None
