import math

import pytest
import torch

from cifar10_latency.data import Split, normalize
from cifar10_latency.evaluate import accuracy_report, evaluate, predict_logits


def one_hot_logits(predictions):
    return torch.nn.functional.one_hot(torch.tensor(predictions), 10).float()


def test_report_overall_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    logits = one_hot_logits([0, 1, 1, 1, 2, 0, 2, 4])

    report = accuracy_report(logits, labels)

    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["count"] == 8


def test_report_per_class_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    logits = one_hot_logits([0, 1, 1, 1, 2, 0, 2, 4])

    per_class = accuracy_report(logits, labels)["per_class"]

    assert len(per_class) == 10
    assert per_class[0] == pytest.approx(0.5)
    assert per_class[1] == pytest.approx(1.0)
    assert per_class[2] == pytest.approx(2 / 3)
    assert per_class[3] == pytest.approx(0.0)


def test_report_absent_class_is_nan():
    report = accuracy_report(one_hot_logits([0, 1]), torch.tensor([0, 1]))

    for value in report["per_class"][2:]:
        assert math.isnan(value)


def test_report_argmax_of_scores():
    logits = torch.tensor([[0.1, 0.9] + [0.0] * 8, [2.0, -1.0] + [0.0] * 8])

    report = accuracy_report(logits, torch.tensor([1, 1]))

    assert report["accuracy"] == pytest.approx(0.5)


class FixedLogits(torch.nn.Module):
    """Scores class 0 by how much brighter the left half is than the right, and class 1 the reverse.

    Mirroring an image swaps the two scores, so flip averaging cancels them out.
    """

    def forward(self, x):
        left = x[..., :16].mean(dim=(1, 2, 3))
        right = x[..., 16:].mean(dim=(1, 2, 3))
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = left - right
        logits[:, 1] = right - left
        return logits


def test_evaluate_records_tta(test_split, tiny_model):
    plain = evaluate(tiny_model, test_split)
    flipped = evaluate(tiny_model, test_split, tta=True)

    assert plain["tta"] is False
    assert flipped["tta"] is True
    assert plain["count"] == len(test_split)


def test_evaluate_restores_train_mode(test_split, tiny_model):
    tiny_model.train()

    evaluate(tiny_model, test_split)

    assert tiny_model.training


def test_tta_averages_mirror():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[..., :16] = 200
    model = FixedLogits()

    plain = predict_logits(model, images)
    averaged = predict_logits(model, images, tta=True)
    x = normalize(images)
    expected = (model(x) + model(x.flip(-1))) / 2

    assert plain[:, 0].gt(0).all()
    assert torch.allclose(averaged, expected)
    assert torch.allclose(averaged, torch.zeros_like(averaged), atol=1e-5)


def test_predict_logits_batches_agree(test_split, tiny_model):
    whole = predict_logits(tiny_model, test_split.images, batch_size=1000)
    pieces = predict_logits(tiny_model, test_split.images, batch_size=7)

    assert whole.shape == (len(test_split), 10)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_evaluate_perfect_model():
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    images[labels == 0, :, :, :16] = 255
    images[labels == 1, :, :, 16:] = 255
    split = Split(images, labels, "sha")

    report = evaluate(FixedLogits(), split)

    assert report["accuracy"] == 1.0
    assert report["per_class"][:2] == [1.0, 1.0]
