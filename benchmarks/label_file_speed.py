"""How long a label file that names N images takes to read and check (`load_data` with --labels):
the parse, the column detection, the per-row checks and a stat of every file. Goal: 10,000 rows
in at most 1 s.

    python benchmarks/label_file_speed.py --rows 10000 [--multilabel] [--repeat 5]

The images are empty `.jpg` files in sub-folders of a temporary folder (reading a label file does
not decode images; the decode check is a separate step, `data/scan.py`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from visionfit.data import load_data
from visionfit.data.label_options import LabelFileOptions
from visionfit.data.samples import FileSamples  # noqa: F401  (torch imported before the clock starts)

CLASSES = [f"class{index:02d}" for index in range(20)]


def make_set(root: Path, rows: int, multilabel: bool) -> Path:
    lines = ["file,label,split"]
    for index in range(rows):
        folder = root / f"part{index % 50:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{index:06d}.jpg").touch()
        labels = CLASSES[index % 20] + (f";{CLASSES[(index * 7) % 20]}" if multilabel and index % 3 else "")
        split = "val" if index % 11 == 0 else "train"
        lines.append(f"part{index % 50:02d}/{index:06d}.jpg,{labels},{split}")
    labels_file = root / "labels.csv"
    labels_file.write_text("\n".join(lines) + "\n")
    return labels_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--multilabel", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        labels_file = make_set(Path(folder), arguments.rows, arguments.multilabel)
        seconds, cpu = [], []
        for _ in range(arguments.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            data = load_data(None, None, label_file=LabelFileOptions(str(labels_file)))
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    print(
        f"{arguments.rows} rows ({data.task}, {len(data.classes)} classes, {len(data.train)} train / "
        f"{len(data.test)} held out): median {statistics.median(seconds):.3f} s, "
        f"max {max(seconds):.3f} s over {arguments.repeat} reads (CPU time: median "
        f"{statistics.median(cpu):.3f} s; wall time counts other processes on a shared machine)"
    )


if __name__ == "__main__":
    main()
