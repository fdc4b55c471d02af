"""Datasets: which images, which classes, which split. `load_data` is the one entry point; the
sources register themselves (`registry`)."""

from visionfit.data.registry import DataSplits, dataset_names, load_data, register_dataset

__all__ = ["DataSplits", "dataset_names", "load_data", "register_dataset"]
