"""`run_doctor(data, options)`: the whole story — collect the items, read every picture once, get a
model's out-of-sample probabilities and features when asked, run every check, write the report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionfit.doctor.checks import CheckResult, Evidence, Issue, get_check, registered_checks, require_extra
from visionfit.doctor.collection import collect
from visionfit.doctor.facts import gather_facts
from visionfit.doctor.options import DoctorOptions
from visionfit.doctor.pretrained import check_pretrained_options
from visionfit.doctor.report import ordered, summary_lines, write_report
from visionfit.errors import UserError

if TYPE_CHECKING:
    from visionfit.data.registry import DataSplits

logger = logging.getLogger(__name__)
# `--fail-on` names kinds, `any`, or `leak`: copies across splits (exact or near).
FAIL_GROUPS = ("any", "leak")


@dataclass
class DoctorReport:
    """What doctor found: every check's result, the ordered issues, the report's summary."""

    folder: Path
    results: list[CheckResult]
    issues: list[Issue]
    summary: dict[str, Any]
    lines: list[str]
    failed: list[str]  # the --fail-on kinds found
    evidence: Evidence  # what the checks read (the facts of every picture, probabilities, features)


def check_fail_on(kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind not in FAIL_GROUPS:
            get_check(kind)  # raises a one-line error naming the kinds


def run_doctor(data: DataSplits, options: DoctorOptions) -> DoctorReport:
    """Find what is wrong with `data` and write the report folder `options.output`."""
    require_extra()
    check_fail_on(options.fail_on)
    check_pretrained_options(options)
    started = time.perf_counter()
    collection = collect(data)
    logger.info(f"doctor: reading {len(collection):,} pictures ({data.description})")
    facts = gather_facts(collection, options.workers, lambda done: logger.debug(f"  {done:,} read"))
    evidence = Evidence(collection, facts, options.settings)
    facts_seconds = time.perf_counter() - started
    if options.use_model:
        from visionfit.doctor.evidence import add_model_evidence  # torch, scikit-learn

        add_model_evidence(evidence, data, options)
    results = [run_check(kind, evidence) for kind in registered_checks()]
    about = {
        "dataset": data.description,
        "classes": collection.classes,
        "seconds": {
            "no_model_checks": round(facts_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    summary = write_report(options.output, results, evidence, about, options.grid_size)
    if options.tensorboard:
        write_tensorboard(options.output, summary)
    lines = summary_lines(results, evidence)
    failed = failed_kinds(results, options.fail_on)
    return DoctorReport(options.output, results, ordered(results), summary, lines, failed, evidence)


def run_check(kind: str, evidence: Evidence) -> CheckResult:
    check = registered_checks()[kind]()
    if check.needs_model and evidence.probabilities is None and evidence.features is None:
        return CheckResult(kind, [], "needs a model (left out by --no-model)", ran=False)
    return check.run(evidence)


def failed_kinds(results: list[CheckResult], fail_on: tuple[str, ...]) -> list[str]:
    """The kinds named by --fail-on that were found (`leak`: any copy across splits)."""
    found = {result.kind for result in results if result.issues}
    failed = [kind for kind in fail_on if kind in found or (kind == "any" and found)]
    if "leak" in fail_on:
        copies = [issue for result in results if result.kind.endswith("duplicate") for issue in result.issues]
        if any("across splits" in issue.detail for issue in copies):
            failed.append("leak")
    return failed


def write_tensorboard(folder: Path, summary: dict[str, Any]) -> None:
    """The suspect grids as TensorBoard image summaries, in `folder`/tensorboard."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tensorboard"))
    for kind, name in summary["grids"].items():
        with Image.open(folder / name) as grid:
            writer.add_image(f"doctor/{kind}", np.asarray(grid.convert("RGB")), 0, dataformats="HWC")
    writer.close()


def no_data_error(data: DataSplits) -> None:
    if len(data.train) + len(data.test) == 0:
        raise UserError("the dataset has no pictures to check")
