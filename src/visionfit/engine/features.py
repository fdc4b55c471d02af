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

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from visionfit.data.order import EpochOrder, FollowsOrder, sample_seed
from visionfit.engine.batches import BatchChoice, RunData, create_batches
from visionfit.errors import UserError
from visionfit.models.heads import find_classifier
from visionfit.paths import cache_dir

CACHE_FORMAT = 1
# Augmented view v is the augmentation the batch stage draws for this "epoch": far from real epochs.
VIEW_EPOCH = 1_000_000
_VIEW_STREAM = -3  # salt of the per-epoch draw of which view each sample uses


class HeadInput:
    """Captures what the model's classification layer receives, during a normal forward pass."""

    def __init__(self, model: nn.Module, num_classes: int, *, every_pass: bool = False) -> None:
        self.head = model.get_submodule(find_classifier(model, num_classes))
        self.captured: torch.Tensor | None = None
        # every_pass: keep all of a call's inputs, for `mean_of_views` (test-time augmentation
        # passes each picture more than once, in one joined batch or in several)
        self.passes: list[torch.Tensor] | None = [] if every_pass else None

    def __enter__(self) -> HeadInput:
        self.handle = self.head.register_forward_pre_hook(self._keep)
        return self

    def __exit__(self, *exception: object) -> None:
        self.handle.remove()

    def _keep(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.captured = inputs[0]
        if self.passes is not None:
            self.passes.append(inputs[0])

    def mean_of_views(self, count: int) -> torch.Tensor:
        """(count, features): what the layer received for the last call's `count` pictures, averaged
        over their test-time views (the head is linear, so these give the averaged logits), and
        forgotten. Needs `every_pass`."""
        assert self.passes, "HeadInput(every_pass=True) and a forward pass first"
        received = torch.cat([tensor.float().flatten(1) for tensor in self.passes])
        self.passes = []
        return received.view(-1, count, received.shape[1]).mean(dim=0)


class FrozenFeatures(FollowsOrder):
    """The frozen backbone's features of a run's training (and test) pictures, and batches of them
    in the run's epoch order (one process: `order` is the whole of every batch) for the head to
    train on."""

    def __init__(self, model: nn.Module, run: RunData) -> None:
        self.model, self.run = model, run
        self.config, self.runtime, self.data = run.config, run.runtime, run.data
        self.preprocess, self.notify = run.preprocess, run.notify
        self.head_name = find_classifier(model, len(self.data.classes))
        self.head = model.get_submodule(self.head_name)
        self.labels = self.data.train.label_tensor().to(self.runtime.device)
        self.order = run.training_order()
        self.views: list[torch.Tensor] = []
        self.test: torch.Tensor | None = None
        self.announced = False

    def head_of(self, model: nn.Module) -> nn.Module:
        """The classification layer of `model` (the run's own, or its moving average)."""
        return model.get_submodule(self.head_name)

    # -- computing the features -------------------------------------------------------------------

    def _pictures(self, view: int) -> tuple[Iterable[Any], Any]:
        """Training batches of view `view` in sample order (0: the evaluation view), and the test
        batches, through the run's own batch stage."""
        config = self.config
        in_sample_order = EpochOrder(
            len(self.data.train), config.test_batch_size, shuffle=False, seed=config.seed, drop_last=False
        )
        choice = BatchChoice(
            order=in_sample_order,
            augment=config.augment and view > 0,
            low_res=False,
            # The test pictures in batches of twice the test batch (no gradients to keep): what this
            # cache has always used, so the cached features stay the same.
            test_batch_size=config.eval_batch_size or 2 * config.test_batch_size,
        )
        batches, test = create_batches(self.run, choice)
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) batches in the same order as the pictures' own batches."""
        self.ready()
        device, order = self.runtime.device, self.order
        generator = torch.Generator().manual_seed(sample_seed(order.seed, order.epoch, _VIEW_STREAM))
        chosen = torch.randint(0, len(self.views), (order.num_samples,), generator=generator).to(device)
        stacked = torch.stack(self.views) if len(self.views) > 1 else None
        for indices, _ in order:
            indices = indices.to(device)
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


def frozen_features(model: nn.Module, run: RunData) -> FrozenFeatures | None:
    """The run's feature cache: with --freeze backbone and --feature-cache, in one process (several
    processes would each need the whole cache and a head synchronised by hand; they run the
    backbone every epoch instead)."""
    if run.config.freeze != "backbone" or not run.config.feature_cache:
        return None
    if run.runtime.world_size > 1:
        run.notify(
            "the feature cache works in one process; with several, the frozen backbone runs every epoch"
        )
        return None
    return FrozenFeatures(model, run)
