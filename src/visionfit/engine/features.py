"""A frozen backbone computes its features once: the head trains on them (--freeze backbone).

With the backbone frozen, every epoch would run the same backbone over the same pictures. Instead
each picture's backbone output — the input of the classification layer — is computed once, kept in
memory and in a cache file (keyed by the backbone's weights, the pictures, the preprocessing and the
views), and the epochs train only the head on it: after the first, an epoch costs almost nothing.

Training uses the evaluation view of each picture; `--feature-views K` adds K augmented views (the
run's own augmentation, drawn per view), and each epoch each sample takes one of its K + 1 views at
random (seeded by the epoch). The test set's features are kept too, unless the run tests with
flip/shift augmentation, which needs the whole network. From `--unfreeze-at` on, the full path runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from visionfit.data.batches import create_batches
from visionfit.data.order import batch_positions, batches_in_epoch, epoch_order, sample_seed
from visionfit.errors import UserError
from visionfit.models.heads import find_classifier
from visionfit.paths import cache_dir

if TYPE_CHECKING:
    from visionfit.config import TrainConfig
    from visionfit.data.registry import DataSplits
    from visionfit.data.transforms import Preprocess
    from visionfit.runtime import Runtime

CACHE_FORMAT = 1
# Augmented view v is the augmentation the batch stage draws for this "epoch": far from real epochs.
VIEW_EPOCH = 1_000_000
_VIEW_STREAM = -3  # salt of the per-epoch draw of which view each sample uses


class HeadInput:
    """Captures what the model's classification layer receives, during a normal forward pass."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.head = model.get_submodule(find_classifier(model, num_classes))
        self.captured: torch.Tensor | None = None

    def __enter__(self) -> HeadInput:
        self.handle = self.head.register_forward_pre_hook(self._keep)
        return self

    def __exit__(self, *exception: object) -> None:
        self.handle.remove()

    def _keep(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.captured = inputs[0]


class FrozenFeatures:
    """The frozen backbone's features of a run's training (and test) pictures, and batches of them
    in each epoch's order for the head to train on."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        runtime: Runtime,
        data: DataSplits,
        preprocess: Preprocess,
        data_path: str,
        notify: Callable[[str], None],
    ) -> None:
        self.model, self.config, self.runtime, self.data = model, config, runtime, data
        self.preprocess, self.data_path, self.notify = preprocess, data_path, notify
        self.head_name = find_classifier(model, len(data.classes))
        self.head = model.get_submodule(self.head_name)
        self.labels = data.train.label_tensor().to(runtime.device)
        self.views: list[torch.Tensor] = []
        self.test: torch.Tensor | None = None
        self.epoch, self.start_batch = 0, 0
        self.announced = False

    def head_of(self, model: nn.Module) -> nn.Module:
        """The classification layer of `model` (the run's own, or its moving average)."""
        return model.get_submodule(self.head_name)

    # -- computing the features -------------------------------------------------------------------

    def _pictures(self, view: int) -> tuple[Iterable[Any], Any]:
        """Training batches of view `view` in sample order (0: the evaluation view), and the test
        batches, through the run's own batch stage."""
        settings = dataclasses.replace(
            self.config,
            shuffle=False,
            drop_last=False,
            augment=self.config.augment and view > 0,
            batch_size=self.config.test_batch_size,
            low_res_epochs=0,
        )
        batches, test = create_batches(
            settings, self.runtime, self.data, self.preprocess, self.data_path, self.notify
        )
        batches.set_epoch(VIEW_EPOCH + view)
        return batches, (batches.normalize, test)

    @torch.inference_mode()
    def _extract(self, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        parts = []
        with HeadInput(self.model, len(self.data.classes)) as head_input:
            for images in inputs:
                with self.runtime.autocast():
                    logits = self.model(images)
                    features = head_input.captured
                    if features is None or not torch.allclose(
                        self.head(features), logits, rtol=1e-3, atol=1e-3
                    ):
                        raise UserError(
                            "the model's output is not its classification layer's; use --no-feature-cache"
                        )
                parts.append(features.float().flatten(1))
        return torch.cat(parts)

    def _load_or_compute(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = cache_dir() / "features" / f"{self._key(name)}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path), device=str(self.runtime.device))["features"]
            except Exception:  # a torn or foreign file: compute again and replace it
                pass
        if not self.announced:
            views = 1 + self.config.feature_views
            self.notify(
                f"computing the frozen backbone's features of the pictures ({views} training "
                f"view{'s' if views > 1 else ''}) once, cached in {path.parent}; the epochs then train "
                "only the head"
            )
            self.announced = True
        features = compute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"features": features.cpu().contiguous()}, str(temporary))
            os.replace(temporary, path)
        except OSError as error:  # a read-only cache costs only the next run's first epoch
            self.notify(f"warning: cannot cache the backbone features in {path.parent} ({error.strerror})")
        return features

    def _key(self, name: str) -> str:
        """Everything the features depend on: the backbone's weights, the pictures, the
        preprocessing, the view and its augmentation, the precision."""
        digest = hashlib.sha256()
        state = self.model.state_dict()
        head_names = {f"{self.head_name}.{key}" for key in self.head.state_dict()}
        for key in sorted(set(state) - head_names):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        samples = self.data.train if name != "test" else self.data.test
        description = {
            "format": CACHE_FORMAT,
            "view": name,
            "samples": [
                [str(path), os.stat(path).st_size, os.stat(path).st_mtime_ns] for path in samples.files()
            ],
            "preprocess": self.preprocess.to_dict(),
            "augment": self.config.augment,
            "seed": self.config.seed if name not in ("0", "test") else None,
            "precision": self.runtime.precision,
            "device": self.runtime.device.type,
        }
        digest.update(json.dumps(description, sort_keys=True).encode())
        if not samples.files():  # pictures held in memory: their bytes
            digest.update(samples.images_at(self.preprocess, lambda _: None).numpy().data)
        return digest.hexdigest()[:32]

    def ready(self) -> None:
        """Compute (or read from the cache) every view of the training pictures, and the test
        pictures' features when the test can use them."""
        if self.views:
            return
        for view in range(1 + self.config.feature_views):
            self.views.append(
                self._load_or_compute(str(view), lambda view=view: self._extract(self._view_inputs(view)))
            )
        if self.tests_on_features:
            self.test = self._load_or_compute("test", lambda: self._extract(self._test_inputs()))

    def _view_inputs(self, view: int) -> Iterator[torch.Tensor]:
        batches, _ = self._pictures(view)
        return (images for images, _ in batches)

    def _test_inputs(self) -> Iterator[torch.Tensor]:
        _, (normalize, test) = self._pictures(0)
        return (normalize(images.to(self.runtime.device)) for images, _, _ in test)

    @property
    def tests_on_features(self) -> bool:
        """Flip and shift test-time augmentation need the pictures themselves."""
        return not self.config.test_time_flip and not self.config.test_time_shift

    # -- the loop's side: batches of features in each epoch's order ------------------------------

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return batches_in_epoch(len(self.labels), self.config.batch_size, self.config.drop_last)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) batches in the same order as the pictures' own batches."""
        self.ready()
        count, config = len(self.labels), self.config
        order = epoch_order(count, config.seed, self.epoch, config.shuffle).to(self.runtime.device)
        generator = torch.Generator().manual_seed(sample_seed(config.seed, self.epoch, _VIEW_STREAM))
        chosen = torch.randint(0, len(self.views), (count,), generator=generator).to(self.runtime.device)
        stacked = torch.stack(self.views) if len(self.views) > 1 else None
        for batch in range(self.start_batch, self.batches_per_epoch()):
            indices = order[batch_positions(batch, config.batch_size, count).to(self.runtime.device)]
            features = self.views[0][indices] if stacked is None else stacked[chosen[indices], indices]
            yield features, self.labels[indices]

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(features, labels, indices) batches of the test set (when `tests_on_features`)."""
        self.ready()
        assert self.test is not None
        labels = self.data.test.label_tensor().to(self.runtime.device)
        size = self.config.test_batch_size
        for start in range(0, len(labels), size):
            indices = torch.arange(start, min(start + size, len(labels)))
            yield self.test[indices.to(self.runtime.device)], labels[indices.to(self.runtime.device)], indices


def frozen_features(
    model: nn.Module,
    config: TrainConfig,
    runtime: Runtime,
    data: DataSplits,
    preprocess: Preprocess,
    data_path: str,
    notify: Callable[[str], None],
) -> FrozenFeatures | None:
    """The run's feature cache: with --freeze backbone and --feature-cache, in one process (several
    processes would each need the whole cache and a head synchronised by hand; they run the
    backbone every epoch instead)."""
    if config.freeze != "backbone" or not config.feature_cache:
        return None
    if runtime.world_size > 1:
        notify("the feature cache works in one process; with several, the frozen backbone runs every epoch")
        return None
    return FrozenFeatures(model, config, runtime, data, preprocess, data_path, notify)
