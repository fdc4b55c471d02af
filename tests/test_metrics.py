import math

import pytest
import torch

from visionfit.engine.loops import Classifier, classify, evaluate
from visionfit.engine.metrics import MetricSums, classification_report, format_report
from visionfit.runtime import Runtime

CLASSES = ["a", "b", "c"]


def test_report_matches_hand_computed_values():
    # true a: 3 (2 right, 1 as b); true b: 2 (1 right, 1 as c); true c: 1 (right)
    confusion = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    report = classification_report(confusion, CLASSES)
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][name] for name in CLASSES)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [a["support"], b["support"], c["support"]] == [3, 2, 1]
    assert report["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["weighted"]["recall"] == pytest.approx(4 / 6)
    assert report["weighted"]["precision"] == pytest.approx((3 * 1.0 + 2 * 0.5 + 1 * 0.5) / 6)


def test_classes_never_predicted_or_absent_count_as_zero_not_nan():
    report = classification_report(torch.tensor([[2, 0, 0], [1, 0, 0], [0, 0, 0]]), CLASSES)
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["c"]["support"] == 0 and report["macro"]["precision"] == pytest.approx(2 / 9)


def test_sums_add_up_over_batches():
    logits = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 3.0]])
    sums = MetricSums(6)
    sums.update(logits[:2], torch.tensor([0, 2]), loss_sum=1.0)
    sums.update(logits[2:], torch.tensor([5]), loss_sum=0.5)
    report = sums.report([str(index) for index in range(6)])
    assert report["count"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["loss"] == pytest.approx(0.5)
    assert report["confusion_matrix"][2][1] == 1


def test_top5_counts_a_hit_anywhere_in_the_five_best():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1, 0]])
    sums = MetricSums(7)
    sums.update(logits, torch.tensor([4]), 0.0)
    sums.update(logits, torch.tensor([5]), 0.0)
    assert sums.top5_correct == 1


def test_evaluation_is_exact_for_a_short_last_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    images, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    classifier = Classifier(model, lambda batch: batch, Runtime(device=torch.device("cpu")))
    indices = torch.arange(10)
    whole = evaluate(classifier, [(images, labels, indices)], 3).sums
    pieces = [(images[at], labels[at], indices[at]) for at in (slice(0, 4), slice(4, 8), slice(8, 10))]
    kept = evaluate(classifier, pieces, 3, keep="predictions")
    assert torch.equal(whole.confusion, kept.sums.confusion)
    expected_loss = torch.nn.functional.cross_entropy(model(images), labels).item()
    assert kept.sums.report(CLASSES)["loss"] == pytest.approx(expected_loss, rel=1e-5)
    predictions = kept.predictions
    assert predictions.indices.tolist() == list(range(10)) and torch.equal(predictions.targets, labels)
    assert torch.equal(predictions.predicted, model(images).argmax(1))


def test_text_table_lists_every_class_and_the_averages():
    text = format_report(classification_report(torch.eye(3, dtype=torch.int64), CLASSES), CLASSES)
    assert all(line in text for line in ("macro avg", "weighted avg", "accuracy"))
    assert len(text.splitlines()) == 1 + 3 + 1 + 2 + 1


class LeftRight(torch.nn.Module):
    """Class 0 when the left half of the image is brighter, class 1 when the right half is."""

    def forward(self, images):
        half = images.shape[-1] // 2
        return torch.stack([images[..., :half].mean((1, 2, 3)), images[..., half:].mean((1, 2, 3))], dim=1)


def test_small_batches_run_their_views_in_one_model_call_with_the_same_logits(monkeypatch):
    from visionfit.engine import loops

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    images = torch.rand(3, 3, 8, 8)
    model(images)
    calls = []
    model.register_forward_pre_hook(lambda _, inputs: calls.append(len(inputs[0])))
    joined = classify(model, images, flip=True, shift=2)
    assert calls == [3 * 6]  # the six views of three images, once
    monkeypatch.setattr(loops, "JOINED_VIEWS_LIMIT", 0)
    calls.clear()
    separate = classify(model, images, flip=True, shift=2)
    assert calls == [3] * 6
    padded = torch.nn.functional.pad(images, [2] * 4, mode="reflect")
    moved = [padded[..., :8, :8], padded[..., 4:, 4:]]
    mirrored = [(model(view) + model(view.flip(-1))) / 2 for view in (images, *moved)]
    expected = (mirrored[0] + (mirrored[1] + mirrored[2]) / 2) / 2
    assert torch.allclose(joined, expected, atol=1e-6)
    assert torch.allclose(separate, expected, atol=1e-6)


def test_flip_averages_each_images_logits_with_its_mirror_images():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 4, 4)
    model = LeftRight()
    expected = (model(images) + model(images.flip(-1))) / 2
    assert torch.equal(classify(model, images, flip=True), expected)
    assert torch.equal(classify(model, images), model(images))
    # LeftRight's mirrored logits are its logits swapped: the average carries no information
    labels = model(images).argmax(1)
    runtime, batches = Runtime(device=torch.device("cpu")), [(images, labels, torch.arange(6))]
    plain = evaluate(Classifier(model, lambda batch: batch, runtime), batches, 2).sums.report(CLASSES[:2])
    mirrored = Classifier(model, lambda batch: batch, runtime, flip=True)
    flipped = evaluate(mirrored, batches, 2).sums.report(CLASSES[:2])
    assert plain["accuracy"] == 1.0
    assert flipped["loss"] == pytest.approx(math.log(2))
