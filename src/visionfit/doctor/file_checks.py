"""Broken and odd files: unreadable, truncated or empty; wrong extension, animated; huge, tiny or
oddly sized next to the rest; extreme aspect ratio."""

from __future__ import annotations

import numpy as np

from visionfit.doctor.checks import BROKEN, ODD, Check, Evidence, Issue, register_check
from visionfit.doctor.facts import EXTENSION_FORMATS

HUGE_PIXELS = 40_000_000  # a 40-megapixel picture costs seconds to decode for a 224-pixel input
TINY_SIDE = 16  # pixels: too small to show what a class looks like
SIZE_RATIO = 25.0  # pixel counts this many times above or below the median are odd
EXTREME_ASPECT = 4.0  # longer side / shorter side


@register_check
class Broken(Check):
    kind = "broken"
    description = "unreadable files (truncated, empty, not an image)"

    def find(self, evidence: Evidence) -> list[Issue]:
        return [
            Issue(int(item), self.kind, 1.0, BROKEN, detail=str(evidence.facts.error[item]))
            for item in np.flatnonzero(evidence.facts.error != "")
        ]


@register_check
class OddFile(Check):
    kind = "odd_file"
    description = "files whose extension does not match their bytes, or animated pictures"

    def find(self, evidence: Evidence) -> list[Issue]:
        facts, issues = evidence.facts, []
        for item, path in enumerate(evidence.collection.paths):
            if path is None or facts.error[item]:
                continue
            expected = EXTENSION_FORMATS.get(path.suffix.lower())
            if expected is not None and facts.format[item] != expected:
                detail = f"named {path.suffix} but holds {facts.format[item] or 'unknown'} data"
                issues.append(Issue(item, self.kind, 0.5, ODD, detail=detail))
            elif facts.frames[item] > 1:
                issues.append(
                    Issue(item, self.kind, 0.5, ODD, detail=f"animated, {facts.frames[item]} frames")
                )
        return issues


@register_check
class OddSize(Check):
    kind = "odd_size"
    description = f"huge, tiny (< {TINY_SIDE} px) or oddly sized pictures (x{SIZE_RATIO:g} the median)"

    def find(self, evidence: Evidence) -> list[Issue]:
        facts = evidence.facts
        readable = facts.error == ""
        pixels = (facts.width * facts.height).astype(np.float64)
        if not readable.any():
            return []
        median = float(np.median(pixels[readable]))
        ratio = np.abs(np.log(np.maximum(pixels, 1) / max(median, 1))) / np.log(SIZE_RATIO)
        odd = readable & (
            (np.minimum(facts.width, facts.height) < TINY_SIDE) | (pixels > HUGE_PIXELS) | (ratio > 1)
        )
        return [
            Issue(
                int(item),
                self.kind,
                float(min(1.0, ratio[item] / 2)),
                ODD,
                detail=f"{facts.width[item]}x{facts.height[item]} (median {median:,.0f} pixels)",
            )
            for item in np.flatnonzero(odd)
        ]


@register_check
class OddAspect(Check):
    kind = "odd_aspect"
    description = f"extreme aspect ratios (beyond {EXTREME_ASPECT:g}:1)"

    def find(self, evidence: Evidence) -> list[Issue]:
        facts = evidence.facts
        short = np.maximum(np.minimum(facts.width, facts.height), 1)
        aspect = np.maximum(facts.width, facts.height) / short
        odd = (facts.error == "") & (aspect > EXTREME_ASPECT)
        return [
            Issue(int(item), self.kind, float(1 - 1 / aspect[item]), ODD, detail=f"{aspect[item]:.1f}:1")
            for item in np.flatnonzero(odd)
        ]
