"""segcore.metrics.MultiClassSegMetrics: mean IoU by MMSegmentation's convention (255 left out, a class absent from
truth and prediction skipped rather than scored 1.0), checked against counts done by hand."""
from __future__ import annotations

import math

import pytest
import torch

from segcore.metrics import MultiClassSegMetrics


def logits_for(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits whose argmax is ``pred`` (B, H, W)."""
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float()


def test_mean_iou_accuracy_and_per_class_iou_match_hand_counts():
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 1]]])  # the last pixel is ignored whatever is predicted
    m = MultiClassSegMetrics(4)  # class 3: in neither truth nor prediction
    m.update(logits_for(pred, 4), target)
    out = m.compute()
    # class 0: tp 2 (pixels 0, 4), fp 1 (pixel 6), fn 1 (pixel 1) -> 2/4; class 1: tp 2, fp 1 (pixel 1) -> 2/3;
    # class 2: tp 1, fn 1 (pixel 6) -> 1/2; class 3: nothing -> skipped
    expected = [2 / 4, 2 / 3, 1 / 2]
    assert out["per_class_iou"][:3].tolist() == pytest.approx(expected) and math.isnan(out["per_class_iou"][3])
    assert out["iou"].item() == pytest.approx(sum(expected) / 3)  # the mean of the three, not of four with a 1.0
    assert out["acc"].item() == pytest.approx(5 / 7)  # 7 pixels counted, 5 right
    dice = [2 * 2 / (4 + 2), 2 * 2 / (4 + 1), 2 * 1 / (2 + 1)]
    assert out["dice"].item() == pytest.approx(sum(dice) / 3)


def test_batches_accumulate_into_one_confusion_matrix_over_the_epoch():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (4, 1, 8, 8))
    logits = torch.randn(4, 3, 8, 8)
    whole, parts = MultiClassSegMetrics(3), MultiClassSegMetrics(3)
    whole.update(logits, target)
    for i in range(4):
        parts.update(logits[i:i + 1], target[i:i + 1])
    assert torch.equal(whole.confusion, parts.confusion) and whole.confusion.sum() == 4 * 64
    assert parts.compute()["iou"].item() == pytest.approx(whole.compute()["iou"].item())


def test_a_value_that_is_no_class_is_refused():
    m = MultiClassSegMetrics(3)
    with pytest.raises(ValueError, match="target values outside 0-2 and 255"):
        m.update(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 7], [1, 255]]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        MultiClassSegMetrics(1)
