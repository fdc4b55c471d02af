"""Doctor's own confident learning and outlier scores, verified against cleanlab (AGPL-3.0: a
test-only dependency, never imported by visionfit) on the same probabilities and features."""

from __future__ import annotations

import numpy as np
import pytest

from visionfit.doctor.checks import Check, register_check
from visionfit.doctor.confident import confident_joint, find_label_issues, prune_by_noise_rate


def noisy_probabilities(seed: int, items: int = 2000, classes: int = 6, noise: float = 0.1):
    """Probabilities of a decent classifier of the true labels, and labels with `noise` flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, items)
    logits = rng.normal(0, 1, (items, classes))
    logits[np.arange(items), true] += 2.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = true.copy()
    flipped = rng.random(items) < noise
    labels[flipped] = (true[flipped] + rng.integers(1, classes, flipped.sum())) % classes
    return labels, probabilities, flipped


@pytest.mark.parametrize("rule", [find_label_issues, prune_by_noise_rate])
def test_label_issues_find_most_flips_and_few_others(rule):
    labels, probabilities, flipped = noisy_probabilities(0)
    found = rule(labels, probabilities)
    precision = (found & flipped).sum() / found.sum()
    recall = (found & flipped).sum() / flipped.sum()
    assert precision > 0.7 and recall > 0.65, (precision, recall)  # self-confidence: 97% and 69%
    assert not found[probabilities.argmax(axis=1) == labels].any()  # the prediction agrees: never flagged


def test_a_confused_judge_costs_the_self_confidence_rule_less_precision():
    """A judge that mixes up two classes (as the quick models mix up cats and dogs): the noise-rate
    rule counts its confusions as label errors; the self-confidence rule flags fewer correct labels."""
    labels, probabilities, flipped = noisy_probabilities(3, items=4000, noise=0.05)
    rng = np.random.default_rng(3)
    confused = (labels < 2) & ~flipped & (rng.random(len(labels)) < 0.3)
    swapped = probabilities.copy()  # the judge puts most of class 0's mass on 1 and the reverse
    swapped[confused, 0], swapped[confused, 1] = probabilities[confused, 1], probabilities[confused, 0]
    precision = {}
    for rule in (find_label_issues, prune_by_noise_rate):
        found = rule(labels, swapped)
        precision[rule.__name__] = (found & flipped).sum() / found.sum()
    assert precision["find_label_issues"] > precision["prune_by_noise_rate"] + 0.05, precision


def test_confident_joint_rows_keep_the_label_counts():
    labels, probabilities, _ = noisy_probabilities(1, classes=4)
    joint = confident_joint(labels, probabilities)
    assert (joint.sum(axis=1) == np.bincount(labels, minlength=4)).all()


@pytest.mark.parametrize("seed", range(4))
def test_label_issues_agree_with_cleanlab(seed):
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    labels, probabilities, _ = noisy_probabilities(seed, classes=5 + seed)
    # n_jobs=1: cleanlab's default forks a Pool after torch has started its threads, and a forked
    # child can hang for ever (it did once in CI).
    for ours, filter_by in (
        (find_label_issues(labels, probabilities), "low_self_confidence"),
        (prune_by_noise_rate(labels, probabilities), "prune_by_noise_rate"),
    ):
        theirs = cleanlab_filter.find_label_issues(labels, probabilities, filter_by=filter_by, n_jobs=1)
        agreement = (ours & theirs).sum() / (ours | theirs).sum()
        assert agreement >= 0.97, (filter_by, ours.sum(), theirs.sum(), agreement)


def test_outlier_scores_rank_like_cleanlab():
    pytest.importorskip("sklearn")
    outlier_module = pytest.importorskip("cleanlab.outlier")
    from visionfit.doctor.label_checks import outlier_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 16))  # four classes' clusters, then eight pictures of none
    features = centres[rng.integers(0, 4, 400)] + rng.normal(0, 1, (400, 16))
    features[:8] = rng.normal(0, 3, (8, 16))
    ours = outlier_scores(features)
    theirs = outlier_module.OutOfDistribution().fit_score(features=features)  # low: more of an outlier
    assert set(np.argsort(-ours)[:8]) == set(range(8))
    assert set(np.argsort(theirs)[:8]) == set(range(8))
    correlation = np.corrcoef(np.argsort(np.argsort(-ours)), np.argsort(np.argsort(theirs)))[0, 1]
    assert correlation > 0.8


def test_a_kind_registered_twice_is_an_error():
    class Broken(Check):
        kind = "broken"
        description = "again"

    from visionfit.doctor.checks import check_names

    assert "broken" in check_names()
    with pytest.raises(ValueError, match="registered twice"):
        register_check(Broken)


def test_folds_default_to_two_from_many_pictures_on():
    pytest.importorskip("sklearn")
    from visionfit.doctor.evidence import MANY_PICTURES, default_folds

    assert default_folds(MANY_PICTURES - 1) == 3 and default_folds(MANY_PICTURES) == 2


def test_quick_models_train_half_their_epochs_small_except_on_tiny_pictures(tmp_path):
    from visionfit.doctor.options import DoctorOptions, quick_run

    options = DoctorOptions(epochs=12)
    assert quick_run(options, 32, tmp_path, 0)["low_res_epochs"] == 6
    assert quick_run(options, 12, tmp_path, 0)["low_res_epochs"] == 0  # 3/4 of 12 px: too small
