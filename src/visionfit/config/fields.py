"""The one typed training configuration: every option with its type, default, help text and group.

Every field carries what the CLI needs to expose it, so the flags, their `--help` and the config
saved with each run all come from this one place. The config is flat on purpose: each key is also a
flag (`batch_size` ↔ `--batch-size`) and a line of the saved `config.yaml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionfit.choices import (
    AUTO_AUGMENTS,
    BAD_IMAGE_POLICIES,
    BEST_METRICS,
    CHANNELS_LAST,
    DATA_PATHS,
    DEVICE_HELP,
    FREEZE_MODES,
    HEAD_MODES,
    NONFINITE_POLICIES,
    OPTIMIZERS,
    PRECISION_HELP,
    PRECISIONS,
    RESIZE_MODES,
    SAMPLERS,
    SCHEDULERS,
    TASKS,
)
from visionfit.recipes import recipe_names


def option(
    default: Any,
    help: str | Callable[[], str],
    group: str,
    *,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    metavar: str | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with what the CLI needs to expose it. `help` and `choices` may be
    functions, read each time they are needed: --dataset's come from the dataset registry, which
    code may add to at run time."""
    metadata = {"help": help, "group": group, "choices": choices, "metavar": metavar, "flag": flag}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything `train` needs. Build it with `build_config` to get validation and recipes."""

    # data
    dataset: str | None = option(
        None,
        lambda: "; ".join(f"{source.name}: {source.description}" for source in _datasets()),
        "data",
        choices=lambda: tuple(source.name for source in _datasets()),
    )
    data_dir: str | None = option(
        None,
        "where the dataset lives; cifar10: a cifar-10-batches-py folder or its parent "
        "(default ~/.cache/visionfit/cifar10, downloaded there when missing)",
        "data",
        metavar="DIR",
    )
    test_fraction: float = option(
        0.1,
        "folder datasets without train/ and val/ subfolders: share of each class held out "
        "for testing (seeded, stratified)",
        "data",
    )
    labels: str | None = option(
        None,
        "a label file naming the images and their labels: CSV, TSV or JSON lines; one label column "
        "(several labels in a cell split by ; or |), or one 0/1 column per class; an optional split "
        "column (train, val, test); paths relative to --data-dir when given, else to the file",
        "data",
        metavar="FILE",
    )
    test_labels: str | None = option(None, "a second label file, for the test split", "data", metavar="FILE")
    file_column: str | None = option(
        None, "the label file's column of image paths (default: detected)", "data", metavar="NAME"
    )
    label_column: str | None = option(
        None, "the label file's column of labels (default: detected)", "data", metavar="NAME"
    )
    label_separator: str | None = option(
        None, "what separates several labels in one cell (default: ; or | when the cells hold one)", "data"
    )
    class_names: str | None = option(
        None,
        "comma-separated class names: the names of numeric class ids 0, 1, ... in a label file, "
        "or the classes' order",
        "data",
        metavar="A,B,...",
    )
    task: str = option(
        "auto",
        "single: one class per image (softmax); multilabel: a set of classes per image (a sigmoid "
        "per class, binary cross-entropy); auto: multilabel when the label file gives some image "
        "several labels",
        "data",
        choices=TASKS,
    )
    val_fraction: float | None = option(
        None,
        "share of each class of the training images held out for validation (seeded, stratified; "
        "any dataset): best, early stopping and thresholds are chosen on it and the test split is "
        "measured once, on the best weights, at the end (default: no validation split; best is "
        "chosen on the test split, as the run says)",
        "data",
    )
    input_size: int | None = option(
        None, "image side in pixels fed to the model (default: the model's own)", "data"
    )
    resize: str | None = option(
        None,
        "how a picture becomes the model's square input: crop (shorter side scaled, the centre "
        "square kept), letterbox (longer side scaled, the rest padded with the mean colour: the "
        "whole picture, undistorted) or squash (stretched to the square); kept in the checkpoint "
        "and followed by predict, eval, export and serve (default: crop)",
        "data",
        choices=RESIZE_MODES,
    )
    mean: tuple[float, float, float] | None = option(
        None,
        "per-channel normalisation mean, e.g. 0.5,0.5,0.5 (default: the model's own)",
        "data",
        metavar="R,G,B",
    )
    std: tuple[float, float, float] | None = option(
        None, "per-channel normalisation std (default: the model's own)", "data", metavar="R,G,B"
    )
    augment: bool = option(True, "training augmentation: random crop and horizontal flip", "data")
    auto_augment: str = option(
        "none",
        "automatic augmentation of each training image after its crop and flip (torchvision): "
        "trivialwide (TrivialAugmentWide: one random operation at a random strength), randaugment "
        "(RandAugment: two at strength 9 of 31) or augmix (AugMix: a blend of three short chains); "
        "runs image by image in the training process",
        "data",
        choices=AUTO_AUGMENTS,
    )
    random_erasing: float = option(
        0.0,
        "probability that a training image gets a random rectangle (2 to 33 percent of its area, aspect "
        "ratio 0.3-3.3) erased to the mean colour (0: off)",
        "data",
        metavar="P",
    )
    mixup: float = option(
        0.0,
        "MixUp: blend each training image with its neighbour in the batch, and their labels into "
        "soft targets, in a proportion drawn per batch from Beta(ALPHA, ALPHA), e.g. 0.2 (0: off); "
        "with --cutmix too, each batch takes one of the two at even odds",
        "data",
        metavar="ALPHA",
    )
    cutmix: float = option(
        0.0,
        "CutMix: paste a rectangle of the neighbouring image into each training image, the labels "
        "mixed by area, the area drawn per batch from Beta(ALPHA, ALPHA), e.g. 1.0 (0: off)",
        "data",
        metavar="ALPHA",
    )
    shuffle: bool = option(True, "shuffle the training data every epoch", "data")
    drop_last: bool = option(
        True,
        "drop each epoch's ragged last training batch (keeps BatchNorm away from tiny batches)",
        "data",
    )
    batch_size: int = option(
        64, "images per training step, over all processes together (each takes its share)", "data"
    )
    eval_batch_size: int | None = option(None, "images per test batch (default: 2 x batch size)", "data")
    workers: int | None = option(
        None, "data loading processes (default: chosen per device and dataset)", "data"
    )
    data_path: str = option(
        "auto",
        "memory: decode the dataset once into one uint8 tensor (cached) and augment whole batches on "
        "the device; loader: per-sample DataLoader; auto: memory when the images are at most 64 px "
        "and fit in 2 GiB",
        "data",
        choices=DATA_PATHS,
    )
    low_res_epochs: int = option(
        0,
        "train the first N epochs on images scaled down to --low-res-size, at about "
        "(low-res-size / input-size)^2 of the compute per epoch; testing stays at full size",
        "data",
        metavar="N",
    )
    low_res_size: int | None = option(
        None, "image side for --low-res-epochs (default: 3/4 of the input size)", "data", metavar="PX"
    )
    test_every: int = option(
        1,
        "test every N epochs, and always after the last one; an epoch without a test has no "
        "test numbers and cannot become the best checkpoint",
        "data",
        metavar="N",
    )
    test_time_shift: int = option(
        0,
        "with N > 0, also test on each image moved N pixels up-left and down-right (edges "
        "reflected), weighing the original 1/2 and each copy 1/4 (three times the test time); "
        "eval and predict with the checkpoint do the same",
        "data",
        metavar="N",
    )
    test_time_flip: bool = option(
        False,
        "test on each image and its mirror image and average the two predictions (twice the "
        "test time); eval and predict with the checkpoint do the same",
        "data",
    )
    bad_images: str = option(
        "error",
        "unreadable image files found by the scan before training: error (list them and stop) or "
        "skip (leave them out, listed in the run folder's skipped_images.txt)",
        "data",
        choices=BAD_IMAGE_POLICIES,
    )
    exclude: str | None = option(
        None,
        "leave out the files listed in this CSV (the issues.csv of `visionfit doctor`; its 'file' "
        "column); they are listed in the run folder's skipped_images.txt, and config.yaml and run.json "
        "record the CSV and how many were left out",
        "data",
        metavar="CSV",
    )

    # model
    model: str = option(
        "cifar10-quick",
        "registered model name (see `visionfit models`), or your own nn.Module as "
        "path/to/model.py:ClassName or package.module:ClassName",
        "model",
    )
    model_args: dict[str, Any] = option(  # noqa: RUF009  (option() returns a dataclass field)
        {},
        "builder (or your class's constructor) argument, repeatable",
        "model",
        metavar="KEY=VALUE",
        flag="--model-arg",
    )
    head: str = option(
        "replace",
        "torchvision models: replace the final classification layer with an N-way one, or append "
        "a Linear(1000, N) after it",
        "model",
        choices=HEAD_MODES,
    )
    pretrained: bool = option(
        False, "start a torchvision model from torchvision's pretrained weights (downloaded once)", "model"
    )
    weights: str | None = option(
        None,
        "start a torchvision model from a local weights file (.pth or .safetensors state dict "
        "of the pretrained model), e.g. offline",
        "model",
        metavar="FILE",
    )
    freeze: str = option(
        "none",
        "backbone: train only the head (frozen BatchNorm stays in eval mode)",
        "model",
        choices=FREEZE_MODES,
    )
    unfreeze_at: int | None = option(
        None, "with --freeze backbone: train the whole network from this epoch on", "model", metavar="EPOCH"
    )
    feature_cache: bool = option(
        True,
        "with --freeze backbone: compute the frozen backbone's features of every picture once (kept in "
        "memory and in visionfit's cache) and train only the head on them, so that epochs after the "
        "first cost almost nothing; one process only",
        "model",
    )
    feature_views: int = option(
        0,
        "with the feature cache: also K augmented views of each training picture (K more backbone "
        "passes, once); each epoch each picture uses one of its views at random. 0: the evaluation "
        "view only (no augmentation while the backbone is frozen)",
        "model",
        metavar="K",
    )
    backbone_lr_scale: float = option(
        1.0, "learning rate of the backbone relative to --lr (the head's)", "model", metavar="X"
    )

    # optimisation
    epochs: int = option(10, "passes over the training data", "optimisation")
    time: str | None = option(
        None,
        "a time budget for the epochs (their training and held-out evaluation, not start-up), e.g. "
        "15m, 2h, 1h30m, 90s: after the first epoch, --epochs becomes the number that fits and the "
        "learning-rate schedule ends when the budget does; the run stops cleanly and run.json says why",
        "optimisation",
        metavar="DURATION",
    )
    optimizer: str = option("sgd", "optimizer", "optimisation", choices=OPTIMIZERS)
    lr: float = option(0.01, "peak learning rate", "optimisation")
    momentum: float = option(0.9, "SGD momentum", "optimisation")
    nesterov: bool = option(False, "Nesterov momentum for SGD", "optimisation")
    weight_decay: float = option(5e-4, "L2 penalty (decoupled for adamw)", "optimisation")
    scheduler: str = option(
        "cosine", "learning-rate schedule, stepped every batch", "optimisation", choices=SCHEDULERS
    )
    warmup_epochs: float = option(0.0, "linear warm-up from 0 to --lr over this many epochs", "optimisation")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", "optimisation")
    class_weights: str | None = option(
        None,
        "weigh each class's training loss: auto (inverse frequency in the training split, N / (K x "
        "N_class)), effective (the effective number of samples, (1 - beta) / (1 - beta^N_class) with "
        "beta 0.999, scaled to average 1) or one weight per class, W,W,...; printed at the start; "
        "one label per image only (default: every class 1)",
        "optimisation",
        metavar="auto|effective|W,W,...",
    )
    sampler: str = option(
        "plain",
        "plain: every training image once an epoch; balanced: each epoch draws as many images, with "
        "replacement, every class equally likely (seeded per epoch: exact on resume, on both data "
        "paths and the feature cache; one label per image only)",
        "optimisation",
        choices=SAMPLERS,
    )
    best_metric: str | None = option(
        None,
        "the held-out number that chooses best.safetensors and drives --patience: accuracy, "
        "balanced_accuracy (the mean of the per-class recalls), macro_f1, map (multi-label) or loss "
        "(lowest) (default: accuracy, map for a multi-label run)",
        "optimisation",
        choices=BEST_METRICS,
    )
    patience: int = option(
        0,
        "stop when --best-metric on the validation split has not improved for N epochs in a row "
        "(N tested epochs with --test-every; needs a validation split; 0: off)",
        "optimisation",
        metavar="N",
    )
    ema: float = option(
        0.0,
        "keep an exponential moving average of the weights and BatchNorm statistics, updated after "
        "every optimizer step with decay min(DECAY, (1 + n) / (10 + n)) after n updates (a warm-up), "
        "and test it, keep it as best and save it in every checkpoint instead of the raw weights, "
        "e.g. 0.999 (0: off)",
        "optimisation",
        metavar="DECAY",
    )
    clip_grad_norm: float | None = option(
        None, "clip the gradient norm to this value (default: no clipping)", "optimisation", metavar="X"
    )
    on_nan: str = option(
        "stop",
        "a NaN or infinite loss: stop the run at once, the last good checkpoint intact, or skip the batch",
        "optimisation",
        choices=NONFINITE_POLICIES,
    )

    # run
    recipe: str | None = option(
        None,
        "named set of defaults; flags still override it (see `visionfit recipes`)",
        "run",
        choices=recipe_names(),
    )
    device: str = option("auto", f"{DEVICE_HELP}; auto picks cuda, then mps, then cpu", "run")
    precision: str = option(
        "auto",
        f"numeric precision of the forward and backward pass; {PRECISION_HELP}",
        "run",
        choices=PRECISIONS,
    )
    channels_last: str = option(
        "auto",
        "channels_last (NHWC) memory layout for images and weights; auto: on for CPU and CUDA",
        "run",
        choices=CHANNELS_LAST,
    )
    compile: bool = option(
        False, "compile the model with torch.compile (slow start, then faster steps on a GPU)", "run"
    )
    seed: int = option(0, "seed for initialisation, data order and augmentation", "run")
    deterministic: bool = option(
        False,
        "deterministic algorithms only: a resumed run ends bit-identical to an uninterrupted one",
        "run",
    )
    run_dir: str = option("runs", "folder that holds one sub-folder per run", "run", metavar="DIR")
    name: str | None = option(None, "run name (default: dataset-model-date-time)", "run")
    log_every: int = option(
        100, "print and log the training loss every N steps (0: never)", "run", metavar="N"
    )
    checkpoint_every_steps: int = option(
        0, "also save the last checkpoint every N training steps, mid-epoch (0: off)", "run", metavar="N"
    )
    checkpoint_every_minutes: float = option(
        30.0, "also save the last checkpoint every M minutes, mid-epoch (0: off)", "run", metavar="M"
    )
    keep_every_epoch: bool = option(
        False, "also keep one checkpoint per epoch (epoch_NNN), like the tutorial", "run"
    )
    tensorboard: bool = option(True, "write TensorBoard event files", "run")
    calibrate: bool = option(
        True,
        "with a validation split: fit the checkpoints' temperature on it at the end of the run "
        "(as visionfit calibrate --split val)",
        "run",
    )
    sync_bn: bool = option(
        False, "several GPU processes: BatchNorm statistics over the global batch (SyncBatchNorm)", "run"
    )
    dist_timeout: float = option(
        10.0, "several processes: minutes to wait for the others before ending the job", "run", metavar="M"
    )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    @property
    def test_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size


def _datasets() -> list[Any]:
    from visionfit.data.registry import dataset_names, get_dataset

    return [get_dataset(name) for name in dataset_names()]


def field_help(config_field: dataclasses.Field[Any]) -> str:
    """The option's help text, as of now."""
    help = config_field.metadata["help"]
    return help() if callable(help) else help


def field_choices(config_field: dataclasses.Field[Any]) -> tuple[str, ...] | None:
    """The option's valid values as of now (None: any value of its type)."""
    choices = config_field.metadata.get("choices")
    return choices() if callable(choices) else choices


# The options that name the pictures, their labels and their splits: train's, and doctor's too
# (`visionfit doctor` checks the data exactly as train would read them).
DATA_OPTIONS = (
    "dataset",
    "data_dir",
    "labels",
    "test_labels",
    "file_column",
    "label_column",
    "label_separator",
    "class_names",
    "task",
    "test_fraction",
    "val_fraction",
)


def config_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(TrainConfig))


def flag_name(config_field: dataclasses.Field[Any]) -> str:
    return config_field.metadata.get("flag") or "--" + config_field.name.replace("_", "-")
