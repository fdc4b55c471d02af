"""Every check of the training options, in one place, run before any run folder is made.

`check_config` looks at the config alone (ranges, choices, options that need each other) and runs
whenever a config is built; `check_setup` runs once the device, the process count and the data's
input size are known, still before anything is written. Each failure is one line naming the flag
and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import re

from visionfit.choices import MAX_TEST_TIME_SHIFT, check_device_name
from visionfit.config.fields import TrainConfig, field_choices, flag_name
from visionfit.errors import UserError, did_you_mean


def check_config(config: TrainConfig) -> None:
    """Check values a type cannot express."""
    _check_choices(config)
    _check_counts(config)
    _check_rates(config)
    _check_data_and_model(config)


def _check_choices(config: TrainConfig) -> None:
    for config_field in dataclasses.fields(config):
        value = getattr(config, config_field.name)
        choices = field_choices(config_field) if value is not None else None
        if choices and value not in choices:
            raise UserError(
                f"{flag_name(config_field)} must be one of {', '.join(choices)}, "
                f"got {value!r}{did_you_mean(str(value), choices)}"
            )
    check_device_name(config.device)


def _check_counts(config: TrainConfig) -> None:
    for name in ("batch_size", "epochs", "test_every"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.eval_batch_size is not None and config.eval_batch_size < 1:
        raise UserError(f"--eval-batch-size must be at least 1, got {config.eval_batch_size}")
    if config.input_size is not None and not 8 <= config.input_size <= 4096:
        raise UserError(f"--input-size must be between 8 and 4096 pixels, got {config.input_size}")
    if not 0 <= config.test_time_shift <= MAX_TEST_TIME_SHIFT:
        raise UserError(
            f"--test-time-shift must be between 0 and {MAX_TEST_TIME_SHIFT} pixels, "
            f"got {config.test_time_shift}"
        )
    if config.low_res_epochs < 0:
        raise UserError(f"--low-res-epochs must be 0 (off) or more, got {config.low_res_epochs}")
    if config.low_res_size is not None and config.low_res_size < 8:
        raise UserError(f"--low-res-size must be at least 8 pixels, got {config.low_res_size}")
    if config.workers is not None and config.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {config.workers}")
    if config.checkpoint_every_steps < 0 or config.checkpoint_every_minutes < 0:
        raise UserError("--checkpoint-every-steps and --checkpoint-every-minutes must be 0 (off) or more")
    if config.feature_views < 0:
        raise UserError(f"--feature-views must be 0 or more, got {config.feature_views}")
    if config.log_every < 0:
        raise UserError(f"--log-every must be 0 or more, got {config.log_every}")
    if config.patience < 0:
        raise UserError(f"--patience must be 0 (off) or a number of epochs, got {config.patience}")
    if config.time is not None and not parse_duration(config.time) > 0:
        raise UserError(f"--time must be a positive duration such as 15m, got {config.time!r}")
    _check_class_weights(config.class_weights)


def _check_class_weights(value: str | None) -> None:
    if value is None or value in ("auto", "effective"):
        return
    try:
        weights = [float(item) for item in value.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(math.isfinite(weight) and weight >= 0 for weight in weights):
        raise UserError(
            f"--class-weights must be auto, effective or one number of 0 or more per class "
            f"(W,W,...), got {value!r}"
        )


def _check_rates(config: TrainConfig) -> None:
    if config.clip_grad_norm is not None and not config.clip_grad_norm > 0:
        raise UserError(f"--clip-grad-norm must be positive, got {config.clip_grad_norm}")
    if not config.dist_timeout > 0:
        raise UserError(f"--dist-timeout must be a positive number of minutes, got {config.dist_timeout}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise UserError(f"--lr must be a positive number, got {config.lr}")
    if not 0 <= config.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.weight_decay < 0:
        raise UserError(f"--weight-decay must be 0 or more, got {config.weight_decay}")
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0 <= config.warmup_epochs <= config.epochs:
        raise UserError(
            f"--warmup-epochs must be between 0 and --epochs ({config.epochs}), got {config.warmup_epochs}"
        )
    for name in ("mixup", "cutmix"):
        alpha = getattr(config, name)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise UserError(f"--{name} must be 0 (off) or a Beta alpha above 0 such as 0.2 or 1, got {alpha}")
    if not 0 <= config.random_erasing <= 1:
        raise UserError(f"--random-erasing must be a probability from 0 to 1, got {config.random_erasing}")
    if not 0 <= config.ema < 1:
        raise UserError(f"--ema must be 0 (off) or a decay below 1 such as 0.999, got {config.ema}")
    if not 0 < config.test_fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1, got {config.test_fraction}")
    if config.val_fraction is not None and not 0 < config.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, got {config.val_fraction}")
    if not (math.isfinite(config.backbone_lr_scale) and config.backbone_lr_scale > 0):
        raise UserError(f"--backbone-lr-scale must be a positive number, got {config.backbone_lr_scale}")


def _check_data_and_model(config: TrainConfig) -> None:
    if config.std is not None and any(value <= 0 for value in config.std):
        raise UserError(f"--std values must be positive, got {','.join(map(str, config.std))}")
    if config.name is not None and (not config.name or "/" in config.name or config.name in (".", "..")):
        raise UserError(f"--name must be a plain folder name, got {config.name!r}")
    if config.unfreeze_at is not None and (config.freeze != "backbone" or not config.unfreeze_at >= 2):
        raise UserError(
            f"--unfreeze-at needs --freeze backbone and an epoch of 2 or more, got {config.unfreeze_at}"
        )
    if config.feature_views and not (config.freeze == "backbone" and config.feature_cache and config.augment):
        raise UserError(
            "--feature-views draws augmented views for the feature cache: it needs --freeze backbone, "
            "--feature-cache and --augment"
        )
    if config.labels is None and (config.dataset == "labels" or config.task == "multilabel"):
        raise UserError(
            f"--{'dataset labels' if config.dataset == 'labels' else 'task multilabel'} needs --labels FILE"
        )
    if config.labels is not None and config.dataset not in (None, "labels"):
        raise UserError(f"--labels names the images and labels; drop --dataset {config.dataset} or --labels")
    if config.dataset is not None:
        from visionfit.data.registry import check_data_dir

        check_data_dir(config.dataset, config.data_dir)


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise UserError(
            f"--batch-size {batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes; use a multiple of {world_size}"
        )


def low_res_side(config: TrainConfig, input_size: int) -> int | None:
    """The side of --low-res-epochs' batches (default 3/4 of the input size); None when off."""
    if not config.low_res_epochs:
        return None
    return config.low_res_size or input_size * 3 // 4


def check_setup(
    config: TrainConfig, *, device_type: str, world_size: int, input_size: int, validation: bool = False
) -> None:
    """What depends on where and on what the run trains (the task and `validation`, whether the data
    have a validation split, are known once they are read): refused before a run folder is made."""
    check_global_batch(config.batch_size, world_size)
    check_held_out_choices(config, validation)
    if config.sync_bn and world_size > 1 and device_type == "cpu":
        raise UserError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm has no CPU version); leave it out")
    if world_size > 1 and config.unfreeze_at:
        raise UserError(
            "--unfreeze-at cannot change which parameters train in a multi-process run "
            "(DistributedDataParallel fixes them at the start); train the frozen and unfrozen "
            "phases as two runs, the second with --weights from the first"
        )
    low_res = low_res_side(config, input_size)
    if low_res is not None and low_res >= input_size:
        raise UserError(f"--low-res-size {low_res} must be smaller than the input size {input_size}")


def check_held_out_choices(config: TrainConfig, validation: bool) -> None:
    """--patience needs a validation split; --best-metric, --class-weights and --sampler must suit
    the task (known once the data are read: `config.task` is resolved by then)."""
    if config.patience and not validation:
        raise UserError(
            "--patience stops on the validation split, and this run has none: add --val-fraction 0.1 "
            "(or train/, val/ and test/ folders, or a split column), or leave --patience out"
        )
    multilabel = config.task == "multilabel"
    if config.best_metric == "map" and not multilabel:
        raise UserError(
            "--best-metric map is for multi-label runs (--task multilabel); choose accuracy, "
            "balanced_accuracy, macro_f1 or loss"
        )
    if config.best_metric == "balanced_accuracy" and multilabel:
        raise UserError(
            "--best-metric balanced_accuracy is for one label per image; a multi-label run chooses "
            "with map, macro_f1, accuracy (exact match) or loss"
        )
    balancing = [
        flag
        for flag, used in (
            (f"--class-weights {config.class_weights}", config.class_weights is not None),
            ("--sampler balanced", config.sampler == "balanced"),
        )
        if used
    ]
    if multilabel and balancing:
        raise UserError(
            f"{' and '.join(balancing)} balances one class per image; a multi-label run (several "
            "labels per image) cannot use it: leave it out"
        )


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?[hms])+")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str) -> float:
    """Seconds of a --time duration such as 15m, 2h, 1h30m or 90s (a bare number: minutes)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text) * 60
    if not DURATION.fullmatch(text):
        raise UserError(f"--time must be a duration such as 15m, 2h, 1h30m or 90s, got {text!r}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in DURATION_PART.findall(text))
