"""Out-of-sample probabilities and features for the checks that need a model (label issues,
outliers), from the first of three places that applies:

- `--model CHECKPOINT|RUN`: its penultimate layer's features of every picture; probabilities from a
  K-fold logistic regression on them (scikit-learn), so each picture's come from a classifier that
  did not see its label. The features themselves come from a model that may have been trained on
  these labels (and memorised some): the report says so.
- pretrained torchvision weights (`doctor.pretrained`): the ones `--pretrained NAME` names, else
  the cheapest whose file is already in torch's cache; features and probabilities as for --model.
- otherwise a quick model trained on the data itself, K times: the pictures split into K
  stratified folds, a `fast`-recipe model trained on K-1 of them (visionfit's own `train`, on a
  folder of links to the files) gives the probabilities and features of the held-out fold. On
  photos, a model trained from scratch on a few hundred pictures is a weak judge, and the report
  says that too.

The report names the source (`feature_source`). Doctor writes only under its report folder: the
fold folders hold links, not copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from visionfit.doctor.collection import Collection
from visionfit.doctor.options import QUICK_RECIPE, quick_run
from visionfit.doctor.pretrained import (
    PretrainedSource,
    choose_pretrained,
    pretrained_model,
    weights_preprocess,
)
from visionfit.paths import cache_dir
from visionfit.recipes import RECIPES

if TYPE_CHECKING:
    from visionfit.data.registry import DataSplits
    from visionfit.doctor.checks import Evidence
    from visionfit.doctor.options import DoctorOptions
    from visionfit.inference import InferenceModel

logger = logging.getLogger(__name__)
BATCH = 256
CACHE_FORMAT = 2  # bump when the cached evidence changes meaning
QUICK_SIDE = 64  # the quick model's input side for pictures larger than this
# From this many pictures on, 2 folds instead of 3. K quick models train (K-1)/K of the pictures
# each, (K-1) x pictures x epochs in all: 2 folds cost half of 3. Small sets need every picture to
# make a judge and train fast anyway; large ones make a decent judge from half (CIFAR-10: 25,000
# pictures, 8 epochs of the fast recipe) and 3 folds would not fit the 15-minute target.
MANY_PICTURES = 10_000


def add_model_evidence(evidence: Evidence, data: DataSplits, options: DoctorOptions) -> None:
    """Fill `evidence.probabilities`, `features`, `feature_groups`, `probability_source` and
    `feature_source`, from the cache when the same pictures, labels, model and options were seen
    before."""
    from visionfit.inference import load_for_inference

    usable = np.flatnonzero(evidence.facts.error == "")
    options = replace(options, folds=options.folds or default_folds(len(usable)))
    pretrained = choose_pretrained(options)
    regression = f"a {options.folds}-fold logistic regression on the penultimate features of"
    if options.model:
        evidence.feature_source = {"source": "model", "model": options.model}
        evidence.probability_source = (
            f"{regression} {options.model} "
            "(if that model was trained on these labels, its features have partly memorised them)"
        )
    elif pretrained is not None:
        evidence.feature_source = {"source": "pretrained", "model": pretrained.name}
        evidence.feature_source.update(weights=pretrained.weights, file=str(pretrained.file or ""))
        evidence.probability_source = (
            f"{regression} {pretrained.describe()}, trained on other pictures: out-of-sample"
        )
    else:
        model_name = RECIPES[QUICK_RECIPE].values["model"]
        evidence.feature_source = {"source": "quick", "model": model_name, "epochs": options.epochs}
        evidence.probability_source = (
            f"{options.folds} quick models (fast recipe, {options.epochs} epochs, no pretrained weights), "
            "each trained on the other folds: out-of-sample"
        )
    path = cache_dir() / "doctor" / f"{evidence_key(evidence, options, pretrained)}.npz"
    if path.is_file():
        logger.info(f"doctor: the model's probabilities and features from the cache ({path})")
        with np.load(path) as stored:
            probabilities, features, groups = stored["probabilities"], stored["features"], stored["groups"]
    elif options.model or pretrained is not None:
        model = (
            pretrained_model(pretrained, len(evidence.collection.classes), options.device)
            if pretrained is not None
            else load_for_inference(options.model, device=options.device, flip=False, shift=0)
        )
        logger.info(f"doctor: features from {evidence.probability_source.removeprefix(regression).strip()}")
        probabilities, features = model_evidence(model, evidence.collection, usable, options.folds)
        groups = np.where(evidence.facts.error == "", 0, -1)
    else:
        probabilities, features, groups = quick_model_evidence(evidence.collection, usable, options)
    if not path.is_file():
        store_evidence(path, probabilities, features, groups)
    evidence.probabilities, evidence.features, evidence.feature_groups = probabilities, features, groups


def default_folds(count: int) -> int:
    """K of the cross-validation when --folds is not given: 2 for many pictures, else 3."""
    return 2 if count >= MANY_PICTURES else 3


def store_evidence(path: Path, probabilities: np.ndarray, features: np.ndarray, groups: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez(temporary, probabilities=probabilities, features=features, groups=groups)
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache costs only the next run's training
        logger.warning(f"warning: cannot cache doctor's model evidence in {path.parent} ({error.strerror})")


def evidence_key(evidence: Evidence, options: DoctorOptions, pretrained: PretrainedSource | None) -> str:
    """Everything the probabilities and features depend on: the pictures' content hashes and
    labels, the model file(s) (path, size, modification time) or the pretrained weights' file and
    preprocessing, or the quick models' settings."""
    digest = hashlib.sha256()
    model = None
    if options.model:
        source = Path(options.model).expanduser()
        files = sorted(source.rglob("*.safetensors")) if source.is_dir() else [source]
        model = [[str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns] for file in files]
    settings = {"format": CACHE_FORMAT, "model": model, "folds": options.folds, "seed": options.seed}
    if pretrained is not None:
        settings.update(pretrained=pretrained.identity(), preprocess=weights_preprocess(pretrained).to_dict())
    elif not options.model:
        settings.update(epochs=options.epochs, side=QUICK_SIDE)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update("\n".join(evidence.facts.digest).encode())
    digest.update(evidence.collection.labels.astype(np.int64).tobytes())
    return digest.hexdigest()[:32]


def pictures_of(collection: Collection, items: np.ndarray, side_of: InferenceModel) -> torch.Tensor:
    from visionfit.prediction import picture_pixels

    return torch.stack([picture_pixels(collection.picture(int(item)), side_of.preprocess) for item in items])


@torch.inference_mode()
def features_and_probabilities(
    model: InferenceModel, collection: Collection, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The penultimate features and the probabilities of `items`, in batches, with the model's
    test-time augmentation (the features averaged over its views)."""
    from visionfit.engine.features import HeadInput

    features, probabilities = [], []
    with HeadInput(model.model, len(model.classes), every_pass=True) as head_input:
        for start in range(0, len(items), BATCH):
            images = pictures_of(collection, items[start : start + BATCH], model)
            probabilities.append(model.probabilities(images).float().numpy())
            features.append(head_input.mean_of_views(len(images)).cpu().numpy())
    return np.concatenate(features), np.concatenate(probabilities)


def _full(count: int, columns: int, items: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
    table = np.full((count, columns), fill, dtype=np.float64)
    table[items] = values
    return table


def model_evidence(
    model: InferenceModel, collection: Collection, usable: np.ndarray, folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features from `model`'s penultimate layer, probabilities from a K-fold logistic regression
    on them: each item's from a classifier that did not see its label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, _ = features_and_probabilities(model, collection, usable)
    labels = collection.labels[usable]
    if collection.multilabel:  # a set per picture: one regression per class (one-vs-rest)
        from visionfit.doctor.multilabel_evidence import per_class_regression

        probabilities = per_class_regression(features, labels, folds)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
        probabilities = cross_val_predict(classifier, features, labels, cv=splitter, method="predict_proba")
    count, classes = len(collection), len(collection.classes)
    uniform = 1.0 / classes
    return _full(count, classes, usable, probabilities, uniform), _full(
        count, features.shape[1], usable, features, 0
    )


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A stratified fold number for every item."""
    from sklearn.model_selection import StratifiedKFold

    assignment = np.zeros(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        assignment[held_out] = fold
    return assignment


def class_folder_names(classes: list[str]) -> list[str]:
    """The class names as folder names when they can be (so a fold's checkpoint knows them), else
    numbers; either way in the classes' order (folder datasets sort their classes)."""
    usable = all(name and "/" not in name and not name.startswith(".") for name in classes)
    return (
        list(classes)
        if usable and sorted(classes) == list(classes)
        else [f"{index:04d}" for index in range(len(classes))]
    )


def write_fold_folder(collection: Collection, items: np.ndarray, held_out: np.ndarray, folder: Path) -> None:
    """folder/train|val/<class>/ with a link to each file (a PNG for a picture in memory)."""
    if folder.exists():
        shutil.rmtree(folder)
    names = class_folder_names(collection.classes)
    for split, members in (("train", items[~held_out]), ("val", items[held_out])):
        for name in names:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for item in members:
            name = names[int(collection.labels[item])]
            path = collection.paths[item]
            target = folder / split / name / f"{item:07d}{path.suffix if path else '.png'}"
            if path is not None:
                os.symlink(path, target)
            else:
                collection.picture(int(item)).save(target)


def quick_model_evidence(
    collection: Collection, usable: np.ndarray, options: DoctorOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-sample probabilities and features from K quick models, each trained on K-1 folds,
    and the fold (the model) of each item's features."""
    if collection.multilabel:  # a label file per fold, a sigmoid per class
        return multilabel_quick_models(collection, usable, options)
    from visionfit.inference import load_for_inference
    from visionfit.training import train

    count, classes = len(collection), len(collection.classes)
    probabilities = np.full((count, classes), 1.0 / classes)
    features: np.ndarray | None = None
    folds = fold_of(collection.labels[usable], options.folds, options.seed)
    groups = np.full(count, -1, dtype=np.int64)
    groups[usable] = folds
    side = quick_side(collection)
    work = options.output / "folds"
    for fold in range(options.folds):
        held_out = folds == fold
        logger.info(
            f"doctor: quick model {fold + 1}/{options.folds} ({(~held_out).sum():,} pictures to learn from)"
        )
        write_fold_folder(collection, usable, held_out, work / f"data{fold}")
        settings = quick_run(options, side, work, fold)
        result = train(dataset="folder", data_dir=str(work / f"data{fold}"), **settings)
        accuracy = result.history[-1]["test"]["accuracy"]
        logger.info(f"doctor: quick model {fold + 1} classifies its held-out fold at {accuracy:.1%}")
        shutil.rmtree(work / f"data{fold}", ignore_errors=True)  # links only; the run stays
        # With the test-time flip its training tested with: about a point more agreement on CIFAR-10.
        model = load_for_inference(result.last_checkpoint, device=options.device)
        items = usable[held_out]
        fold_features, fold_probabilities = features_and_probabilities(model, collection, items)
        probabilities[items] = fold_probabilities
        if features is None:
            features = np.zeros((count, fold_features.shape[1]))
        features[items] = fold_features  # comparable only within the fold (`groups`)
    return probabilities, features if features is not None else np.zeros((count, 1)), groups


def multilabel_quick_models(
    collection: Collection, usable: np.ndarray, options: DoctorOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`quick_model_evidence` of label sets (`multilabel_evidence`), with this module's side and
    feature reader."""
    from visionfit.doctor.multilabel_evidence import multilabel_quick_evidence

    side, predict = quick_side(collection), features_and_probabilities
    return multilabel_quick_evidence(collection, usable, options, side=side, predict=predict)


def quick_side(collection: Collection) -> int:
    sample = collection.picture(0)
    return min(QUICK_SIDE, max(sample.width, sample.height)) if sample.width == sample.height else QUICK_SIDE
