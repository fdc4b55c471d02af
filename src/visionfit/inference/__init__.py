"""Inference: a checkpoint or an exported file → a model ready to classify (`load_for_inference`),
run as one `InferenceOptions` says. `options` is torch-free; the rest loads torch."""

from visionfit.inference.loading import build_model, load_for_inference
from visionfit.inference.model import InferenceModel
from visionfit.inference.options import InferenceOptions

__all__ = ["InferenceModel", "InferenceOptions", "build_model", "load_for_inference"]
