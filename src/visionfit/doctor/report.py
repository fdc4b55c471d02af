"""The report folder: report.json (the summary and every issue), issues.csv (one row per issue, the
file `train --exclude` reads), one PNG grid of the worst suspects per kind, and the lines the
terminal shows. Written only under the report folder, never next to the data."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from visionfit.doctor.checks import CheckResult, Evidence, Issue
from visionfit.doctor.grids import suspect_grid

CSV_COLUMNS = ("file", "split", "kind", "score", "given_label", "suggested_label", "duplicate_of", "detail")


def ordered(results: list[CheckResult]) -> list[Issue]:
    """Every issue, the ones to look at first first: by priority, then by score."""
    issues = [issue for result in results for issue in result.issues]
    return sorted(issues, key=lambda issue: (issue.priority, -issue.score))


def issue_row(issue: Issue, evidence: Evidence) -> dict[str, Any]:
    collection = evidence.collection
    item = issue.item
    label = collection.classes[issue.label] if issue.label is not None else ""
    return {
        "file": collection.name(item) if item is not None else "",
        "split": collection.splits[item] if item is not None else "train",
        "kind": issue.kind,
        "score": round(issue.score, 4),
        "given_label": collection.label_name(item) if item is not None else label,
        "suggested_label": collection.label_text(issue.suggested) if issue.suggested is not None else "",
        "duplicate_of": collection.name(issue.duplicate_of) if issue.duplicate_of is not None else "",
        "detail": issue.detail,
    }


def write_report(
    folder: Path, results: list[CheckResult], evidence: Evidence, about: dict[str, Any], grid_size: int = 16
) -> dict[str, Any]:
    """Write report.json, issues.csv and the grids into `folder`; return the report's summary."""
    folder.mkdir(parents=True, exist_ok=True)
    issues = ordered(results)
    rows = [issue_row(issue, evidence) for issue in issues]
    with open(folder / "issues.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    grids = {}
    for result in results:
        pictured = [issue for issue in ordered([result]) if issue.item is not None][:grid_size]
        if pictured:
            path = folder / f"{result.kind}.png"
            suspect_grid(pictured, evidence.collection, path)
            grids[result.kind] = path.name
    summary = {
        **about,
        "items": len(evidence.collection),
        "probabilities": evidence.probability_source or None,
        "features": evidence.feature_source or None,
        "in_sample": evidence.in_sample,
        "kinds": {
            result.kind: {"count": len(result.issues), "summary": result.summary, "ran": result.ran}
            for result in results
        },
        "grids": grids,
    }
    report = {**summary, "issues": rows}
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return summary


def summary_lines(results: list[CheckResult], evidence: Evidence, worst: int = 3) -> list[str]:
    """The terminal's summary: one line per kind, then its worst few files (relative to the folder
    that holds them all; report.json and issues.csv keep the full paths)."""
    files = [str(path) for path in evidence.collection.paths if path is not None]
    root = os.path.commonpath(files) if files else ""
    root = root if root and os.path.isdir(root) else os.path.dirname(root)
    lines = [f"  (files under {root}/)"] if root else []

    def short(name: str) -> str:
        return os.path.relpath(name, root) if root and name.startswith(root) else name

    for result in results:
        if not result.ran:
            lines.append(f"  {result.kind}: not checked ({result.summary})")
            continue
        lines.append(f"  {result.kind}: {result.summary}")
        for issue in ordered([result])[:worst] if result.issues else []:
            row = issue_row(issue, evidence)
            where = short(row["file"]) if row["file"] else f"class {row['given_label']}"
            extra = f" -> {row['suggested_label']}" if row["suggested_label"] else ""
            copy = f" (copy of {short(row['duplicate_of'])})" if row["duplicate_of"] else ""
            lines.append(
                f"      {row['score']:.2f} {where} [{row['given_label']}{extra}]{copy} {row['detail']}"
            )
    return lines
