"""Out-of-sample probabilities and features for the checks that need a model (label issues,
outliers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.data.registry import DataSplits
    from visionfit.doctor.checks import Evidence
    from visionfit.doctor.run import DoctorOptions


def add_model_evidence(evidence: Evidence, data: DataSplits, options: DoctorOptions) -> None:
    """Fill `evidence.probabilities` and `evidence.features` (not built yet)."""
    raise UserError("label issues and outliers are not available yet; run doctor with --no-model")
