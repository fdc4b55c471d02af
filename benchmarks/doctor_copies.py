"""`visionfit doctor` on planted copies across train/test: COUNT training pictures copied into the
test split four ways — exact, JPEG re-encoded at quality 50, resized to half, cropped by 5% (2.5% off
each side) — in a linked copy of a folder dataset (links, no data copied). Then the share of each
found (flagged as a copy of its source), the hash distances, and the other cross-split pairs
flagged (written as a grid to look at: OUT/unplanted.png).

    python benchmarks/doctor_copies.py --data-dir ~/.cache/visionfit-dev/cifar10 --out /tmp/copies
    python benchmarks/doctor_copies.py --data-dir ~/.cache/visionfit-dev/flowers-dev --count 50 --out /tmp/fc

Prints one JSON line. Only the checks that need no model run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("exact", "jpeg50", "half", "crop5")


def planted(source: Path, variant: str) -> bytes:
    if variant == "exact":
        return source.read_bytes()
    with Image.open(source) as image:
        picture = image.convert("RGB")
    if variant == "half":
        picture = picture.resize((max(1, picture.width // 2), max(1, picture.height // 2)), Image.BILINEAR)
    elif variant == "crop5":
        dx, dy = max(1, round(picture.width * 0.025)), max(1, round(picture.height * 0.025))
        picture = picture.crop((dx, dy, picture.width - dx, picture.height - dy))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=50 if variant == "jpeg50" else 95)
    return buffer.getvalue()


def linked_copy(source: Path, target: Path, count: int, seed: int) -> dict[str, tuple[str, str]]:
    """target/train|test as links to source's, plus the planted copies in test; returns planted
    file -> (variant, its source's link)."""
    held_out = "val" if (source / "val").is_dir() else "test"
    train_files = []
    for split, name in (("train", "train"), (held_out, "test")):
        for folder in sorted(path for path in (source / split).iterdir() if path.is_dir()):
            (target / name / folder.name).mkdir(parents=True, exist_ok=True)
            for file in sorted(folder.iterdir()):
                link = target / name / folder.name / file.name
                os.symlink(file, link)
                if name == "train":
                    train_files.append(link)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train_files), size=count * len(VARIANTS), replace=False)
    plants = {}
    for position, index in enumerate(chosen):
        variant, original = VARIANTS[position % len(VARIANTS)], train_files[index]
        copy = target / "test" / original.parent.name / f"planted_{variant}_{original.stem}.jpg"
        copy.write_bytes(planted(original, variant))
        plants[str(copy)] = (variant, str(original))
    return plants


def sweep(evidence, plants: dict, index: dict, distances: dict) -> dict:
    """At other --near-duplicate-bits: planted copies within reach, and cross-split pairs that are
    not planted (upper bounds: doctor lists each picture once, with its closest partner)."""
    from visionfit.doctor.duplicates import close_pairs

    facts, splits = evidence.facts, np.asarray(evidence.collection.splits)
    usable = np.flatnonzero((facts.error == "") & (facts.spread >= 0.02))
    planted_pairs = {(index[copy], index[original]) for copy, (_, original) in plants.items()}
    planted_pairs |= {(b, a) for a, b in planted_pairs}
    firsts, seconds, _ = close_pairs(facts.phash[usable], 16)
    firsts, seconds = usable[firsts], usable[seconds]
    table = {}
    for bits in (4, 6, 8, 10, 12):
        near = np.bitwise_count(facts.phash[firsts] ^ facts.phash[seconds]) <= bits
        cross = near & (splits[firsts] != splits[seconds])
        pairs = zip(firsts[cross], seconds[cross], strict=True)
        other = sum((int(a), int(b)) not in planted_pairs for a, b in pairs)
        within = sum(sum(d <= bits for d in values) for values in distances.values())
        table[bits] = {"planted_within": within, "other_cross_split_pairs": other}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=100, help="copies per variant (default: 100)")
    parser.add_argument("--bits", type=int, help="doctor's --near-duplicate-bits (default: doctor's)")
    parser.add_argument("--out", type=Path, required=True, help="the report and the grid of unplanted pairs")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    from visionfit.data.registry import load_data
    from visionfit.doctor.checks import Settings
    from visionfit.doctor.grids import suspect_grid
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.run import run_doctor

    with tempfile.TemporaryDirectory() as work:
        plants = linked_copy(arguments.data_dir.expanduser(), Path(work), arguments.count, arguments.seed)
        data = load_data("folder", work)
        started = time.perf_counter()
        settings = Settings() if arguments.bits is None else Settings(arguments.bits)
        options = DoctorOptions(output=arguments.out, use_model=False, settings=settings)
        report = run_doctor(data, options)
        seconds = time.perf_counter() - started
        collection, facts = report.evidence.collection, report.evidence.facts
        index = {str(path): item for item, path in enumerate(collection.paths)}
        copies = [issue for issue in report.issues if issue.kind.endswith("duplicate")]
        linked = {(issue.item, issue.duplicate_of) for issue in copies}
        found, distances = {variant: 0 for variant in VARIANTS}, {variant: [] for variant in VARIANTS}
        for copy, (variant, original) in plants.items():
            pair = (index[copy], index[original])
            found[variant] += pair in linked
            distances[variant].append(int(np.bitwise_count(facts.phash[pair[0]] ^ facts.phash[pair[1]])))
        planted_items = {index[copy] for copy in plants}
        unplanted = [
            issue for issue in copies if "across splits" in issue.detail and issue.item not in planted_items
        ]
        suspect_grid(unplanted[:48], collection, arguments.out / "unplanted.png")
        result = {
            "data": str(arguments.data_dir),
            "pictures": len(collection),
            "bits": settings.near_duplicate_bits,
            "found": {variant: f"{found[variant]}/{arguments.count}" for variant in VARIANTS},
            "found_share": round(sum(found.values()) / len(plants), 4),
            "distance_median_max": {v: [int(np.median(d)), int(max(d))] for v, d in distances.items()},
            "unplanted_cross_split": len(unplanted),
            "unplanted_exact": sum(issue.kind == "exact_duplicate" for issue in unplanted),
            "seconds": round(seconds, 1),
            "sweep": sweep(report.evidence, plants, index, distances),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
