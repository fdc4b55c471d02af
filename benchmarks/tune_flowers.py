"""`visionfit tune` on the flower photos: what pruning saves, and what the best configuration buys.

    python benchmarks/tune_flowers.py pruning --trials 20 --epochs 5   # both studies, one after the other
    python benchmarks/tune_flowers.py pruning --pruners median         # or each in its own process
    python benchmarks/tune_flowers.py final --epochs 5 --seeds 0,1,2

`pruning`: the same 20-trial study twice, same sampler seed (TPE, seed 0) — with the median pruner
and without — on a validation split held out of the flower photos' train/ (val/ is the test split and
is not touched). Reports the epochs each study trained, its best validation accuracy and its time.

`final`: the pruned study's best.yaml against the recipe it searched around (the `scratch` recipe
with the study's model, size and epochs), each trained on all of train/ and measured once on the test
split, for each seed.

The photos are first shrunk to a 40-px short side (a copy in WORK/flowers-40) so that a CPU study
fits an evening: the model is airnet at 32 px. Data: ~/.cache/visionfit-dev/flowers-dev.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEV = Path("~/.cache/visionfit-dev").expanduser()
FLOWERS = DEV / "flowers-dev"
SIDE = 40


def shrink(source: Path, target: Path) -> Path:
    """A copy of the train/ and val/ photo folders with each photo's short side SIDE pixels."""
    from PIL import Image

    if (target / "done").is_file():
        return target
    for path in sorted(source.rglob("*.jpg")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = SIDE / min(image.size)
            size = (max(SIDE, round(image.width * scale)), max(SIDE, round(image.height * scale)))
            image.resize(size, Image.Resampling.BICUBIC).save(out, quality=95)
    (target / "done").write_text("ok\n")
    return target


def base_flags(data: Path, epochs: int) -> list[str]:
    return [
        "--dataset", "folder", "--data-dir", str(data), "--recipe", "scratch", "--model", "airnet",
        "--input-size", "32", "--epochs", str(epochs), "--low-res-epochs", "0", "--workers", "0",
        "--no-tensorboard", "--log-every", "0",
    ]  # fmt: skip


def run_study(work: Path, data: Path, name: str, pruner: str, trials: int, epochs: int) -> dict:
    from visionfit.cli import main

    started = time.perf_counter()
    command = ["tune", *base_flags(data, epochs), "--run-dir", str(work), "--study", name]
    command += ["--pruner", pruner, "--trials", str(trials), "--search-seed", "0", "--no-final-test"]
    if main(command) != 0:
        raise SystemExit(f"study {name} failed")
    wall = time.perf_counter() - started
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(work / name / 'study.db').resolve()}")
    trained = sum(trial.user_attrs.get("epochs_trained", 0) for trial in study.trials)
    states = [trial.state.name for trial in study.trials]
    return {
        "study": name,
        "pruner": pruner,
        "trials": len(study.trials),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": trained,
        "epochs_budget": trials * epochs,
        "best_val_accuracy": study.best_value,
        "best_params": study.best_params,
        "wall_s": round(wall),
    }


def pruning(arguments: argparse.Namespace) -> None:
    data = shrink(FLOWERS, arguments.work / f"flowers-{SIDE}")
    rows = [
        run_study(arguments.work, data, f"{pruner}-pruner", pruner, arguments.trials, arguments.epochs)
        for pruner in arguments.pruners
    ]
    print(json.dumps(rows, indent=2))
    print("| pruner | trials (complete / pruned / failed) | epochs trained | best val accuracy | wall |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['pruner']} | {row['trials']} ({row['complete']} / {row['pruned']} / {row['failed']}) | "
            f"{row['epochs_trained']} of {row['epochs_budget']} | {row['best_val_accuracy']:.2%} | "
            f"{row['wall_s']} s |"
        )


def train_once(work: Path, name: str, flags: list[str]) -> float:
    from visionfit.cli import main

    if main(["train", *flags, "--run-dir", str(work / "final"), "--name", name]) != 0:
        raise SystemExit(f"run {name} failed")
    lines = (work / "final" / name / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["test"]["accuracy"]  # the last epoch: nothing chosen on test


def final(arguments: argparse.Namespace) -> None:
    data = shrink(FLOWERS, arguments.work / f"flowers-{SIDE}")
    best = arguments.work / arguments.study / "best.yaml"
    results: dict[str, list[float]] = {"best.yaml": [], "scratch recipe": []}
    for seed in arguments.seeds:
        results["best.yaml"].append(
            train_once(arguments.work, f"best-{seed}", ["--config", str(best), "--seed", str(seed)])
        )
        flags = [*base_flags(data, arguments.epochs), "--seed", str(seed)]
        results["scratch recipe"].append(train_once(arguments.work, f"recipe-{seed}", flags))
    print(json.dumps(results, indent=2))
    print("| configuration | " + " | ".join(f"seed {seed}" for seed in arguments.seeds) + " | mean |")
    print("|---|" + "---|" * (len(arguments.seeds) + 1))
    for name, scores in results.items():
        cells = " | ".join(f"{score:.2%}" for score in scores)
        print(f"| {name} | {cells} | {statistics.mean(scores):.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pruning", "final"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/visionfit-tune-bench"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pruners", type=lambda text: text.split(","), default=["median", "none"])
    parser.add_argument("--study", default="median-pruner", help="final: the study whose best.yaml to train")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    arguments = parser.parse_args()
    arguments.work.mkdir(parents=True, exist_ok=True)
    (pruning if arguments.what == "pruning" else final)(arguments)


if __name__ == "__main__":
    sys.exit(main())
