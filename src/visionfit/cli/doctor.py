"""`visionfit doctor`: find what is wrong with a dataset before it is trained on (the work is in
`visionfit.doctor`); prints the summary, writes the report folder, exits 1 on --fail-on kinds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from visionfit.cli.arguments import positive
from visionfit.cli.train import add_config_options
from visionfit.config.fields import DATA_OPTIONS

KINDS_HELP = (
    "broken, odd_file, odd_size, odd_aspect, dark, light, blurry, low_information, near_constant, "
    "exact_duplicate, near_duplicate, class_imbalance, label_issue, outlier"
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="find what is wrong with a dataset: broken files, copies and leaks, wrong labels, outliers",
        description="Check a dataset (the same data options as train: CIFAR-10, folders, label files "
        "with one or several labels per image) for broken and odd files, image properties, exact and "
        "near copies (across the train, val and test splits, with conflicting labels first), likely "
        "label errors (confident learning on out-of-sample probabilities; per class for multi-label "
        "data), outliers and class imbalance. Writes report.json, issues.csv and suspect grids; never "
        "changes a file of the dataset. `visionfit train --exclude REPORT/issues.csv` trains without "
        "the listed files.",
    )
    add_config_options(parser, names=DATA_OPTIONS)  # train's own flags: the data as train reads them
    parser.add_argument("--seed", type=int, default=0, help="as in train; also the folds' (default: 0)")
    parser.add_argument(
        "--out", metavar="DIR", default="doctor-report", help="the report folder (default: doctor-report)"
    )
    add_model_options(parser.add_argument_group("label issues and outliers"))
    parser.add_argument(
        "--fail-on",
        metavar="KIND[,KIND]",
        type=lambda text: tuple(kind.strip() for kind in text.split(",") if kind.strip()),
        default=(),
        help=f"exit 1 when issues of these kinds are found: {KINDS_HELP}; any; leak (copies across splits)",
    )
    parser.add_argument(
        "--near-duplicate-bits",
        type=int,
        default=8,
        metavar="N",
        help="perceptual hashes (64 bits) at most N bits apart are near copies (default: 8)",
    )
    parser.add_argument("--grid-size", type=positive, default=16, help="suspects per grid (default: 16)")
    parser.add_argument(
        "--tensorboard", action="store_true", help="also write the grids as TensorBoard images"
    )
    parser.set_defaults(handler=run)


def add_model_options(model: argparse._ArgumentGroup) -> None:
    """Where the model behind label issues and outliers comes from."""
    model.add_argument(
        "--model",
        metavar="CHECKPOINT|RUN",
        help="take features from this model's penultimate layer (probabilities: a K-fold logistic "
        "regression on them); default: pretrained torchvision weights already in torch's cache "
        "(TORCH_HOME/hub/checkpoints; the cheapest model when several), else a quick model trained on "
        "K folds of the data itself",
    )
    model.add_argument(
        "--pretrained",
        metavar="NAME",
        help="take features from torchvision model NAME's pretrained weights instead (downloaded once "
        "when missing, as train --pretrained does)",
    )
    model.add_argument(
        "--weights", metavar="FILE", help="with --pretrained NAME: its weights from this local file"
    )
    model.add_argument(
        "--no-pretrained",
        action="store_true",
        help="train the quick models even when pretrained weights are on this machine",
    )
    model.add_argument(
        "--folds",
        type=positive,
        help="K of the cross-validation (default: 2 for 10,000 pictures or more, else 3)",
    )
    from visionfit.doctor.options import (  # no torch, no numpy: --help stays fast
        LOW_RES_FROM_SIDE,
        QUICK_EPOCHS,
    )

    model.add_argument(
        "--epochs",
        type=positive,
        default=QUICK_EPOCHS,
        help=f"epochs of each fold's quick model, the first half at 3/4 size from a "
        f"{LOW_RES_FROM_SIDE}-px input on (default: {QUICK_EPOCHS})",
    )
    model.add_argument("--no-model", action="store_true", help="only the checks that need no model (fast)")
    model.add_argument("--device", default="auto", help="for the model (default: auto)")


def run(arguments: argparse.Namespace) -> int:
    from visionfit.console import setup_logging
    from visionfit.doctor.checks import Settings
    from visionfit.doctor.options import DoctorOptions
    from visionfit.doctor.pretrained import check_pretrained_options
    from visionfit.doctor.run import check_fail_on, run_doctor

    setup_logging()
    options = DoctorOptions(
        output=Path(arguments.out).expanduser(),
        use_model=not arguments.no_model,
        model=arguments.model,
        pretrained=arguments.pretrained,
        weights=arguments.weights,
        no_pretrained=arguments.no_pretrained,
        folds=arguments.folds,
        epochs=arguments.epochs,
        device=arguments.device,
        seed=arguments.seed,
        fail_on=arguments.fail_on,
        grid_size=arguments.grid_size,
        tensorboard=arguments.tensorboard,
        settings=Settings(near_duplicate_bits=arguments.near_duplicate_bits),
    )
    check_fail_on(options.fail_on)  # before reading any data
    check_pretrained_options(options)
    data = load_doctor_data(arguments)  # a malformed label file: train's one line, nothing written
    report = run_doctor(data, options)
    print(f"doctor: {len(report.issues)} issues in {report.summary['items']:,} pictures")
    print("\n".join(report.lines))
    print(f"report: {report.folder / 'report.json'}, {report.folder / 'issues.csv'} and the grids")
    if report.failed:
        print(f"doctor: failing (--fail-on): {', '.join(report.failed)} found")
        return 1
    return 0


def load_doctor_data(arguments: argparse.Namespace) -> Any:
    """The dataset the data flags name, checked and read as train checks and reads it."""
    import dataclasses

    from visionfit.config import TrainConfig
    from visionfit.config.validation import check_config
    from visionfit.data.label_options import label_file_options
    from visionfit.data.registry import SplitShares, load_data

    values = {name: getattr(arguments, name) for name in DATA_OPTIONS if hasattr(arguments, name)}
    # The defaults plus these flags, checked by train's checks (no recipe: doctor trains its own way).
    config = dataclasses.replace(TrainConfig(), seed=arguments.seed, **values)
    check_config(config)
    return load_data(
        config.dataset,
        config.data_dir,
        shares=SplitShares(config.test_fraction, config.val_fraction, config.seed),
        label_file=label_file_options(vars(config)),
    )
