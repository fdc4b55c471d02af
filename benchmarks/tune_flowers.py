"""`visionfit tune` on the flower photos: what pruning saves, and what the best configuration buys.

    python benchmarks/tune_flowers.py pruning --pruners median    # one study per process, side by
    python benchmarks/tune_flowers.py pruning --pruners none      # side (OMP_NUM_THREADS=1 each)
    python benchmarks/tune_flowers.py compare                     # the two studies' table
    python benchmarks/tune_flowers.py final --seeds 0,1,2

`pruning`: a 20-trial study of 10-epoch trials (TPE, seed 0), with tune's default pruner settings
(median, 3 start-up trials, from epoch 2 of 10: `--startup-trials`/`--prune-from` to change them)
or without pruning (`--pruners none`); `--pruners median,none` runs both one after the other. Trials
are scored on tune's validation split: 0.2 of each class of the flower photos' train/ (val/ is the
test split and is not touched). `compare` reads both studies from WORK and prints, side by side,
the epochs each trained (and the pruned one's share of the unpruned one's), its best validation
accuracy and the best trial's test accuracy (its run measured it once, at its end).

`final`: the pruned study's best.yaml against the recipe it searched around (the `scratch` recipe
with the study's model, size and epochs), each trained as tune trains a trial (0.2 of train/ held
out for validation, best epoch chosen on it) and measured once on the test split, for each seed.

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


def run_study(arguments: argparse.Namespace, data: Path, pruner: str) -> dict:
    from visionfit.cli import main

    work, name = arguments.work, f"{pruner}-pruner"
    started = time.perf_counter()
    command = ["tune", *base_flags(data, arguments.epochs), "--run-dir", str(work), "--study", name]
    command += ["--pruner", pruner, "--trials", str(arguments.trials), "--search-seed", "0"]
    if arguments.startup_trials is not None:
        command += ["--startup-trials", str(arguments.startup_trials)]
    if arguments.prune_from is not None:
        command += ["--prune-from", str(arguments.prune_from)]
    if main(command) != 0:
        raise SystemExit(f"study {name} failed")
    row = study_row(work, name, arguments.epochs)
    row["wall_s"] = round(time.perf_counter() - started)
    return row


def study_row(work: Path, name: str, epochs: int) -> dict:
    """What a finished study in WORK/NAME trained and found."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{(work / name / 'study.db').resolve()}")
    trained = sum(trial.user_attrs.get("epochs_trained", 0) for trial in study.trials)
    states = [trial.state.name for trial in study.trials]
    run_json = Path(study.best_trial.user_attrs["run_folder"]) / "run.json"
    best_test = json.loads(run_json.read_text()).get("test", {})
    return {
        "study": name,
        "pruner": name.removesuffix("-pruner"),
        "trials": len(study.trials),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": trained,
        "epochs_budget": len(study.trials) * epochs,
        "best_trial": study.best_trial.number,
        "best_val_accuracy": study.best_value,
        "best_test_accuracy": best_test.get("accuracy"),
        "best_params": study.best_params,
    }


def print_rows(rows: list[dict]) -> None:
    print(json.dumps(rows, indent=2))
    print(
        "| pruner | trials (complete / pruned / failed) | epochs trained | best val accuracy (trial) "
        "| its test accuracy |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        test = row["best_test_accuracy"]
        print(
            f"| {row['pruner']} | {row['trials']} ({row['complete']} / {row['pruned']} / {row['failed']}) | "
            f"{row['epochs_trained']} of {row['epochs_budget']} | {row['best_val_accuracy']:.2%} "
            f"({row['best_trial']}) | {'-' if test is None else f'{test:.2%}'} |"
        )


def pruning(arguments: argparse.Namespace) -> None:
    data = shrink(FLOWERS, arguments.work / f"flowers-{SIDE}")
    print_rows([run_study(arguments, data, pruner) for pruner in arguments.pruners])


def compare(arguments: argparse.Namespace) -> None:
    """The median and the unpruned study side by side, and the pruned one's share of the epochs."""
    rows = [study_row(arguments.work, f"{pruner}-pruner", arguments.epochs) for pruner in ("median", "none")]
    print_rows(rows)
    median, unpruned = rows
    print(
        f"median pruner: {median['epochs_trained']} of the unpruned study's {unpruned['epochs_trained']} "
        f"epochs ({median['epochs_trained'] / unpruned['epochs_trained']:.0%}); best validation "
        f"{median['best_val_accuracy']:.2%} vs {unpruned['best_val_accuracy']:.2%}"
    )


def train_once(work: Path, name: str, flags: list[str]) -> float:
    from visionfit.cli import main

    if main(["train", *flags, "--run-dir", str(work / "final"), "--name", name]) != 0:
        raise SystemExit(f"run {name} failed")
    # Measured once, at the end, on the weights the validation split chose: nothing chosen on test.
    return json.loads((work / "final" / name / "run.json").read_text())["test"]["accuracy"]


def final(arguments: argparse.Namespace) -> None:
    data = shrink(FLOWERS, arguments.work / f"flowers-{SIDE}")
    best = arguments.work / arguments.study / "best.yaml"
    results: dict[str, list[float]] = {"best.yaml": [], "scratch recipe": []}
    for seed in arguments.seeds:
        results["best.yaml"].append(
            train_once(arguments.work, f"best-{seed}", ["--config", str(best), "--seed", str(seed)])
        )
        flags = [*base_flags(data, arguments.epochs), "--val-fraction", "0.2", "--seed", str(seed)]
        results["scratch recipe"].append(train_once(arguments.work, f"recipe-{seed}", flags))
    print(json.dumps(results, indent=2))
    print("| configuration | " + " | ".join(f"seed {seed}" for seed in arguments.seeds) + " | mean |")
    print("|---|" + "---|" * (len(arguments.seeds) + 1))
    for name, scores in results.items():
        cells = " | ".join(f"{score:.2%}" for score in scores)
        print(f"| {name} | {cells} | {statistics.mean(scores):.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pruning", "compare", "final"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/visionfit-tune-bench"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pruners", type=lambda text: text.split(","), default=["median", "none"])
    parser.add_argument("--startup-trials", type=int, help="tune's --startup-trials (default: tune's)")
    parser.add_argument("--prune-from", type=int, help="tune's --prune-from (default: tune's)")
    parser.add_argument("--study", default="median-pruner", help="final: the study whose best.yaml to train")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    arguments = parser.parse_args()
    arguments.work.mkdir(parents=True, exist_ok=True)
    {"pruning": pruning, "compare": compare, "final": final}[arguments.what](arguments)


if __name__ == "__main__":
    sys.exit(main())
