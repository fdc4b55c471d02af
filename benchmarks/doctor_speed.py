"""The checks of `visionfit doctor` that need no model (files, properties, exact and near copies,
imbalance), timed on a dataset, with the process's peak memory.

    python benchmarks/doctor_speed.py --data-dir ~/.cache/visionfit-dev/flowers-dev
    python benchmarks/doctor_speed.py --data-dir ~/.cache/visionfit-dev/cifar10      # the 60k in memory
    python benchmarks/doctor_speed.py --dataset folder --data-dir ~/.cache/visionfit-dev/cifar10  # 50k JPEGs

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset")
    parser.add_argument("--data-dir", required=True)
    arguments = parser.parse_args()
    from visionfit.data.registry import load_data
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.run import run_doctor

    started = time.perf_counter()
    data = load_data(arguments.dataset, str(Path(arguments.data_dir).expanduser()), download=False)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        report = run_doctor(data, DoctorOptions(output=Path(work), use_model=False))
    finished = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "data": data.description,
        "pictures": report.summary["items"],
        "load_seconds": round(loaded - started, 1),
        "read_seconds": report.summary["seconds"]["no_model_checks"],
        "doctor_seconds": round(finished - loaded, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        # CPU seconds (user + system) of the whole process: what the work costs, whoever else runs
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "counts": {kind: value["count"] for kind, value in report.summary["kinds"].items() if value["ran"]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
