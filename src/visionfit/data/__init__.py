"""Datasets: which images, which classes, which split. `load_data` is the one entry point; the
sources register themselves (`registry`)."""

# The built-in sources register first, and always in this order, whichever data module is imported
# first: a bare --data-dir is recognised by the first source that claims it (CIFAR-10's batch files
# before a folder of class folders).
from visionfit.data import cifar, folder  # noqa: F401
from visionfit.data.registry import DataSplits, dataset_names, load_data, register_dataset

__all__ = ["DataSplits", "dataset_names", "load_data", "register_dataset"]
