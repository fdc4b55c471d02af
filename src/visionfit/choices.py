"""Every fixed list of choices a flag or a config key accepts, defined once.

Plain tuples, no torch: the CLI builds its `--help` from them without importing anything heavy, and
the config, the runtime and the models check values against the same tuples. Lists that grow by
registration (models, datasets, recipes) live in their registries instead.
"""

from __future__ import annotations

import re

from visionfit.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = (
    "auto: bf16 on CPUs with AVX512-BF16 or AMX and on GPUs that have it, fp16 on older GPUs, fp32 otherwise"
)
CHANNELS_LAST = ("auto", "on", "off")
DEVICE_HELP = "auto|cpu|cuda|cuda:N|mps"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DATA_PATHS = ("auto", "memory", "loader")
BAD_IMAGE_POLICIES = ("error", "skip")
HEAD_MODES = ("replace", "append")
FREEZE_MODES = ("none", "backbone")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "cosine")
NONFINITE_POLICIES = ("stop", "skip")
SPLITS = ("train", "val", "test")
SAMPLERS = ("plain", "balanced")
BEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "map", "loss")
AUTO_AUGMENTS = ("none", "trivialwide", "randaugment", "augmix")
RESIZE_MODES = ("crop", "letterbox", "squash")
# torchvision's InterpolationMode values (checked without importing torchvision)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
EXPORT_FORMATS = ("onnx",)
QUANTIZE_MODES = ("int8",)
# What loading a checkpoint may do with the model code it names (`file.py:Class`): refuse any,
# run only the recorded file with its recorded SHA-256, or trust whatever file is there.
MODEL_CODE_POLICIES = ("refuse", "recorded", "trust")
# Reflect padding needs the shift below the smallest input side (--input-size 8).
MAX_TEST_TIME_SHIFT = 4


def is_device_name(name: str) -> bool:
    return bool(DEVICE_PATTERN.match(name))


def check_device_name(name: str) -> None:
    """A --device value of the right form, or a one-line error naming the valid ones."""
    if not is_device_name(name):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


# What a model predicts per image: one class (softmax), or a set of classes (one sigmoid per class);
# auto: a set when some image of a label file has several labels.
TASKS = ("auto", "single", "multilabel")
