"""Exact copies (same bytes, or the same pixels in memory) and near copies (perceptual hashes a few
bits apart: robust to re-encoding, resizing and small crops), within and across splits.

A hash is 64 bits of a 32-pixel picture's lowest frequencies, and on small pictures with plain
backgrounds (a bird or a plane on a blue sky, CIFAR-10) different photos can land a few bits apart.
So a pair more than CONFIRMED_BITS apart is kept only when the pictures also look alike pixel by
pixel: the correlation of their 16 x 16 grey thumbnails at least SAME_PICTURE_CORRELATION. Measured
(benchmarks/RESULTS.md): planted 5% crops of CIFAR-10 pictures correlate at 0.92 or more, the
flower photos' own re-cropped copies at 0.83-0.89; of the CIFAR-10 pairs 6-8 bits apart (or with
conflicting labels) that the hashes alone flag across train and test, 0.8 keeps 53 of the 58 that
are the same photo and 16 of the 56 that are not.

Copies across splits (train ↔ val ↔ test leaks: any two different splits) with conflicting labels
(a different class, or a different set of classes for multi-label data) come first in the list, then
other leaks, then conflicting labels within a split, then plain copies. Every group keeps one
member unlisted (its first item), so `train --exclude issues.csv` leaves one copy of each.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from visionfit.doctor.checks import DUPLICATE, LEAK_FIRST, Check, Evidence, Issue, register_check
from visionfit.doctor.collection import Collection

HASH_BITS = 64
NEAR_CONSTANT_SPREAD = 0.02  # pixel standard deviation (0-1) below which a hash is not compared
_CHUNK = 128  # rows of the pairwise distance matrix held at once (128 x 60k bytes)
CONFIRMED_BITS = 4  # pairs at most this far apart are copies on the hashes' word alone
SAME_PICTURE_CORRELATION = 0.8


def copy_priority(collection: Collection, item: int, original: int) -> tuple[int, str]:
    """Where a copy goes in the list, and what it says about the pair's splits and labels."""
    cross = collection.splits[item] != collection.splits[original]
    conflict = not collection.same_labels(item, original)  # a different class, or label set
    notes = []
    if cross:
        notes.append(f"across splits ({collection.splits[original]} -> {collection.splits[item]})")
    if conflict:
        notes.append(
            f"conflicting labels ({collection.label_name(original)} vs {collection.label_name(item)})"
        )
    priority = (
        LEAK_FIRST
        if cross and conflict
        else LEAK_FIRST + 1
        if cross
        else LEAK_FIRST + 2
        if conflict
        else DUPLICATE
    )
    return priority, "; ".join(notes)


def exact_groups(evidence: Evidence) -> list[list[int]]:
    """Items with the same content hash, in groups of two or more (readable items only)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for item, digest in enumerate(evidence.facts.digest):
        if digest and not evidence.facts.error[item]:
            groups[digest].append(item)
    return [members for members in groups.values() if len(members) > 1]


@register_check
class ExactDuplicate(Check):
    kind = "exact_duplicate"
    description = "exact copies (same bytes)"

    def find(self, evidence: Evidence) -> list[Issue]:
        issues = []
        for members in exact_groups(evidence):
            original = members[0]
            for item in members[1:]:
                priority, detail = copy_priority(evidence.collection, item, original)
                issues.append(Issue(item, self.kind, 1.0, priority, duplicate_of=original, detail=detail))
        return issues

    def summarize(self, issues: list[Issue], evidence: Evidence) -> str:
        return _copy_summary(len(issues), self.description, issues)


def close_pairs(hashes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (first < second) of 64-bit hashes at most `bits` apart, and their distances."""
    firsts, seconds, distances = [], [], []
    for start in range(0, len(hashes), _CHUNK):
        block = hashes[start : start + _CHUNK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, columns = np.nonzero(distance <= bits)
        rows = rows + start
        keep = columns > rows
        firsts.append(rows[keep])
        seconds.append(columns[keep])
        distances.append(distance[rows[keep] - start, columns[keep]])
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances).astype(np.int64)


def thumbnail_correlation(thumbnails: np.ndarray, firsts: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The correlation (-1 to 1) of the grey thumbnails of each pair (firsts[k], seconds[k])."""
    if not len(firsts):
        return np.zeros(0)

    def centred(items: np.ndarray) -> np.ndarray:
        pixels = np.stack([np.frombuffer(thumbnails[item], dtype=np.uint8) for item in items]).astype(
            np.float64
        )
        pixels -= pixels.mean(axis=1, keepdims=True)
        return pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-9)

    return (centred(firsts) * centred(seconds)).sum(axis=1)


@register_check
class NearDuplicate(Check):
    kind = "near_duplicate"
    description = "near copies (re-encoded, resized or slightly cropped)"

    def find(self, evidence: Evidence) -> list[Issue]:
        facts, collection = evidence.facts, evidence.collection
        # One representative per exact group: its exact copies are reported by exact_duplicate.
        copies = {item for members in exact_groups(evidence) for item in members[1:]}
        # A near-constant picture's hash is noise around one value: it says nothing about copies.
        meaningful = (facts.error == "") & (facts.spread >= NEAR_CONSTANT_SPREAD)
        candidates = np.array(
            [item for item in np.flatnonzero(meaningful) if item not in copies], dtype=np.int64
        )
        bits = evidence.settings.near_duplicate_bits
        firsts, seconds, distances = close_pairs(facts.phash[candidates], bits)
        firsts, seconds = candidates[firsts], candidates[seconds]
        alike = (distances <= CONFIRMED_BITS) | (
            thumbnail_correlation(facts.thumbnail, firsts, seconds) >= SAME_PICTURE_CORRELATION
        )
        firsts, seconds, distances = firsts[alike], seconds[alike], distances[alike]
        closest: dict[int, tuple[int, int]] = {}  # item -> (distance, partner); the later item of each pair
        for first, second, distance in zip(firsts, seconds, distances, strict=True):
            if int(second) not in closest or distance < closest[int(second)][0]:
                closest[int(second)] = (int(distance), int(first))
        issues = []
        for item, (distance, original) in closest.items():
            priority, detail = copy_priority(collection, item, original)
            detail = f"{detail}; " if detail else ""
            issues.append(
                Issue(
                    item,
                    self.kind,
                    1 - distance / HASH_BITS,
                    priority,
                    duplicate_of=original,
                    detail=f"{detail}perceptual hashes {distance} bits apart",
                )
            )
        return issues

    def summarize(self, issues: list[Issue], evidence: Evidence) -> str:
        return _copy_summary(len(issues), self.description, issues)


def _copy_summary(count: int, description: str, issues: list[Issue]) -> str:
    leaks = sum(issue.priority in (LEAK_FIRST, LEAK_FIRST + 1) for issue in issues)
    conflicts = sum(issue.priority in (LEAK_FIRST, LEAK_FIRST + 2) for issue in issues)
    return f"{count} {description}: {leaks} across splits, {conflicts} with conflicting labels"
