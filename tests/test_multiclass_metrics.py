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


def _ddp_rank(rank: int, world: int, port: int, logits, target, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = MultiClassSegMetrics(3)
        m.update(logits[rank::world], target[rank::world])  # each rank its share of the split, as DDP samples
        values = m.compute()  # torchmetrics sums the confusion matrices of the ranks first
        out[rank] = {k: v.tolist() for k, v in values.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes importing torch: seconds
def test_ddp_ranks_sum_their_confusion_matrices_into_the_whole_splits_mean_iou():
    """A DDP trial of many classes: each rank sees its share of the validation split, and the epoch's figures are
    those of the whole split (two real processes over gloo on 127.0.0.1)."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    target = torch.randint(0, 3, (6, 1, 8, 8))
    target[0, 0, :2] = 255
    logits = torch.randn(6, 3, 8, 8)
    whole = MultiClassSegMetrics(3)
    whole.update(logits, target)
    expected = {k: v.tolist() for k, v in whole.compute().items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_rank, args=(2, port, logits, target, out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank]["iou"] == pytest.approx(expected["iou"])
        assert out[rank]["per_class_iou"] == pytest.approx(expected["per_class_iou"])
        assert out[rank]["acc"] == pytest.approx(expected["acc"])
