"""The service's `POST /explain`: the top classes of each uploaded picture and, as a PNG data URL,
the picture with the Grad-CAM map of its predicted class (or a named one) over it.

The `Explainer` (`visionfit.explaining`) is built on the first request, not at start-up, so a
service whose users never ask costs nothing, and a missing `grad-cam` package or an ONNX model is
answered with one line (501) instead of stopping the service. Maps run one at a time on a worker
thread with the explainer's own copy of the network: the batcher's predictions never pass the
hooks grad-cam sets.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import torch

from visionfit.errors import UserError
from visionfit.inference import InferenceModel
from visionfit.prediction import Prediction, Predictor, prediction_record, stack_pixels
from visionfit.serve.limits import Refused


class ServedExplanations:
    """The explainer of one service's model, made when first needed (or the reason it cannot be)."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model
        self.explainer: Any = None
        self.refusal: str | None = None
        self.lock = threading.Lock()

    def _explainer(self) -> Any:
        with self.lock:
            if self.explainer is None and self.refusal is None:
                try:
                    from visionfit.explaining import Explainer

                    self.explainer = Explainer(self.model)
                except UserError as error:
                    self.refusal = str(error)
        if self.refusal is not None:
            raise Refused(501, self.refusal)
        return self.explainer

    def _explain(self, pixels: list[torch.Tensor], class_name: str | None) -> tuple[Any, list[str]]:
        from visionfit.explaining import overlay, png_bytes

        explainer = self._explainer()
        classes = self.model.classes
        if class_name is not None and class_name not in classes:
            raise Refused(422, f"class {class_name!r} is not one of the model's classes")
        index = classes.index(class_name) if class_name is not None else None
        explanation = explainer.explain(stack_pixels(pixels), index)
        overlays = [
            "data:image/png;base64," + base64.b64encode(png_bytes(overlay(picture, heatmap))).decode("ascii")
            for picture, heatmap in zip(pixels, explanation.maps, strict=True)
        ]
        return explanation, overlays

    async def answer(
        self, names: list[str], pixels: list[torch.Tensor], top_k: int, class_name: str | None
    ) -> list[dict[str, Any]]:
        """predict's records, each with "explained" (the class of the map) and "overlay"."""
        explanation, overlays = await asyncio.to_thread(self._explain, pixels, class_name)
        tops = Predictor(self.model).top_k(explanation.probabilities, top_k)
        records = []
        for row, name in enumerate(names):
            record = prediction_record(Prediction(name, tops[row]))
            record["explained"] = self.model.classes[explanation.explained[row]]
            record["overlay"] = overlays[row]
            records.append(record)
        return records
