"""Image properties as cleanvision scores them: dark, light, blurry, low information, near-constant.

Each property has a quality score in 0–1 (1: fine) and a threshold below which the picture is
flagged; the issue's score is 1 - quality. `Settings.thresholds[kind]` overrides a threshold.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from visionfit.doctor.checks import PROPERTY, Check, Evidence, Issue, register_check
from visionfit.doctor.facts import Facts


class PropertyCheck(Check):
    """A picture property: `quality(facts)` per item, flagged below `threshold`."""

    threshold: ClassVar[float]

    def quality(self, facts: Facts) -> np.ndarray:
        raise NotImplementedError

    def find(self, evidence: Evidence) -> list[Issue]:
        facts = evidence.facts
        quality = np.clip(self.quality(facts), 0.0, 1.0)
        threshold = evidence.settings.thresholds.get(self.kind, self.threshold)
        flagged = (facts.error == "") & (quality < threshold)
        return [
            Issue(
                int(item),
                self.kind,
                float(1 - quality[item]),
                PROPERTY,
                detail=f"quality {quality[item]:.3f}",
            )
            for item in np.flatnonzero(flagged)
        ]


@register_check
class Dark(PropertyCheck):
    kind = "dark"
    description = "dark pictures (their brightest pixels are dim)"
    threshold = 0.22  # on the 99th percentile of perceived brightness

    def quality(self, facts: Facts) -> np.ndarray:
        return facts.dark


@register_check
class Light(PropertyCheck):
    kind = "light"
    description = "washed-out pictures (their darkest pixels are bright)"
    threshold = 0.05  # on 1 - the 5th percentile of perceived brightness

    def quality(self, facts: Facts) -> np.ndarray:
        return 1 - facts.light


@register_check
class Blurry(PropertyCheck):
    kind = "blurry"
    description = "blurry pictures (weak edges)"
    threshold = 0.3

    def quality(self, facts: Facts) -> np.ndarray:
        # The edge response's spread, scaled so that ordinary photos sit near 1 (0.1 of the range).
        return 1 - np.exp(-facts.sharpness / 0.03)


@register_check
class LowInformation(PropertyCheck):
    kind = "low_information"
    description = "pictures with little information (few grey levels)"
    threshold = 0.3  # on the grey-level entropy / 8 bits

    def quality(self, facts: Facts) -> np.ndarray:
        return facts.entropy / 8.0


@register_check
class NearConstant(PropertyCheck):
    kind = "near_constant"
    description = "near-constant pictures (almost one colour)"
    threshold = 0.2  # pixel standard deviation below 0.02 of the range

    def quality(self, facts: Facts) -> np.ndarray:
        return facts.spread / 0.1
