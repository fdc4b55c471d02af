"""`visionfit doctor` on planted label errors: a copy (links, no data copied) of a folder dataset
with a share of its training labels flipped at random, then doctor's label issues against the flips.

    python benchmarks/doctor_labels.py --data-dir ~/.cache/visionfit-dev/cifar10
    python benchmarks/doctor_labels.py --data-dir ~/.cache/visionfit-dev/flowers-dev
    nice -n 19 python benchmarks/doctor_labels.py --data-dir ~/.cache/visionfit-dev/cifar10 \
        --per-class 100 --epochs 2

Without --folds/--epochs, doctor's own defaults (what `visionfit doctor` does). The last line is a
smoke run on a slice (100 training pictures per class), not a measurement.

DATA-DIR holds train/<class>/ and val/ or test/<class>/. Precision: the share of flagged training
pictures that were flipped; recall: the share of flips flagged. Time: the whole doctor, training of
the quick models included. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def flipped_copy(
    source: Path, target: Path, share: float, seed: int, per_class: int | None = None
) -> set[str]:
    """target/train|test/<class>/ as links to source's files, `share` of train under another class;
    returns the flipped links' paths."""
    rng = np.random.default_rng(seed)
    held_out = "val" if (source / "val").is_dir() else "test"
    classes = sorted(entry.name for entry in (source / "train").iterdir() if entry.is_dir())
    flipped = set()
    for split, name in (("train", "train"), (held_out, "test")):
        for label, cls in enumerate(classes):
            files = sorted((source / split / cls).iterdir())
            limit = per_class if split == "train" else (per_class // 5 if per_class else None)
            for file in files[:limit]:
                chosen = cls
                if split == "train" and rng.random() < share:
                    chosen = classes[(label + rng.integers(1, len(classes))) % len(classes)]
                link = target / name / chosen / f"{cls}_{file.name}"  # names repeat across classes
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(file, link)
                if chosen != cls:
                    flipped.add(str(link))
    return flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--folds", type=int, help="default: doctor's")
    parser.add_argument("--epochs", type=int, help="default: doctor's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, help="the first N training pictures per class only")
    arguments = parser.parse_args()
    from visionfit.console import setup_logging
    from visionfit.data.registry import load_data
    from visionfit.doctor.collection import collect
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.run import run_doctor

    setup_logging()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "data"
        source = arguments.data_dir.expanduser()
        flipped = flipped_copy(source, root, arguments.share, arguments.seed, arguments.per_class)
        started = time.perf_counter()
        data = load_data("folder", str(root))
        chosen = {"folds": arguments.folds, "epochs": arguments.epochs}
        options = DoctorOptions(
            output=Path(work) / "report",
            seed=arguments.seed,
            **{name: value for name, value in chosen.items() if value is not None},
        )
        report = run_doctor(data, options)
        seconds = time.perf_counter() - started
        paths = collect(data).paths  # the items in doctor's order
        flagged = {str(paths[issue.item]) for issue in report.issues if issue.kind == "label_issue"}
        train_flagged = {name for name in flagged if "/train/" in name}
        hits = len(train_flagged & flipped)
        result = {
            "data": str(arguments.data_dir),
            "train_pictures": len(data.train),
            "test_pictures": len(data.test),
            "flipped": len(flipped),
            "flagged_train": len(train_flagged),
            "flagged_test": len(flagged) - len(train_flagged),
            "precision": round(hits / max(len(train_flagged), 1), 4),
            "recall": round(hits / max(len(flipped), 1), 4),
            "seconds": round(seconds, 1),
            "no_model_seconds": report.summary["seconds"]["no_model_checks"],
            "features": report.summary["features"],
            "probabilities": report.summary["probabilities"],
            "label_issue": report.summary["kinds"]["label_issue"]["summary"],
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
