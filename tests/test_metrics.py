"""Tests for segcore.metrics: SMP's definitions, a hand-checked case, ignored pixels, and the names a fit logs."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch

from segcore.build import make_trainer
from segcore.data.datamodule import PetsDataModule
from segcore.losses import IGNORE_INDEX
from segcore.metrics import BinarySegMetrics
from segcore.metrics_names import EVAL_METRICS, SWEEP_METRIC, stage_metric
from segcore.model import SegmentationModule


def random_batch(seed: int, n: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, size, size, generator=g) * 3
    target = torch.randint(0, 2, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return logits, target


def test_matches_smp_metrics_computed_directly_over_two_updates():
    batches = [random_batch(0), random_batch(1, n=2)]
    metric = BinarySegMetrics()
    for logits, target in batches:
        metric.update(logits, target)
    got = metric.compute()

    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    pred = (logits.sigmoid() > 0.5).long()
    tp, fp, fn, tn = smp.metrics.get_stats(pred, target.long(), mode="binary")
    expected = {
        "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"),
        "per_image_iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise"),
        "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro"),
        "per_image_dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise"),
        "pet_fraction": pred.float().mean(),  # no pixel ignored here: every pixel counts
        "true_fraction": target.float().mean(),
    }
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    # dataset IoU and per-image IoU really are different reductions on this data
    assert not torch.isclose(got["iou"], got["per_image_iou"])


def test_reset_forgets_previous_updates():
    metric = BinarySegMetrics()
    metric.update(*random_batch(0))
    metric.reset()
    logits, target = random_batch(1)
    metric.update(logits, target)
    fresh = BinarySegMetrics()
    fresh.update(logits, target)
    for name, value in fresh.compute().items():
        torch.testing.assert_close(metric.compute()[name], value)


def test_hand_checked_4x4_case():
    target = torch.tensor([[1, 1, 0, 0],
                           [1, 1, 0, 0],
                           [0, 0, 0, 0],
                           [0, 0, 0, 1]], dtype=torch.uint8)
    pred = torch.tensor([[1, 1, 1, 0],
                         [1, 0, 0, 0],
                         [0, 0, 0, 0],
                         [0, 0, 0, 1]])
    # tp = 4 ((0,0) (0,1) (1,0) (3,3)), fp = 1 ((0,2)), fn = 1 ((1,1)): IoU 4/6, Dice 8/10
    logits = torch.where(pred.bool(), 4.0, -4.0)
    metric = BinarySegMetrics()
    metric.update(logits.view(1, 1, 4, 4), target.view(1, 1, 4, 4))
    values = metric.compute()
    assert values["iou"].item() == pytest.approx(4 / 6)
    assert values["per_image_iou"].item() == pytest.approx(4 / 6)
    assert values["dice"].item() == pytest.approx(8 / 10)


def test_threshold_is_on_probability():
    metric = BinarySegMetrics()
    target = torch.ones(1, 1, 1, 2, dtype=torch.uint8)
    metric.update(torch.tensor([[[[0.1, -0.1]]]]), target)  # sigmoid 0.525 -> pet, 0.475 -> background
    assert metric.compute()["iou"].item() == pytest.approx(0.5)


def test_ignored_pixels_change_neither_iou_nor_dice():
    logits, target = random_batch(3, n=2)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, :, 2:9, 5:14] = True
    target_ignored = target.masked_fill(ignored, IGNORE_INDEX)

    results = []
    for fill in (10.0, -10.0, None):  # all pet / all background / random there
        x = logits.clone()
        if fill is None:
            x[ignored] = torch.randn(int(ignored.sum()), generator=torch.Generator().manual_seed(9)) * 5
        else:
            x[ignored] = fill
        metric = BinarySegMetrics()
        metric.update(x, target_ignored)
        results.append(metric.compute())
    for other in results[1:]:
        for name in ("iou", "per_image_iou", "dice", "pet_fraction"):
            torch.testing.assert_close(other[name], results[0][name], msg=name)

    # and the values are those of the counted pixels alone
    keep = ~ignored
    pred = (logits.sigmoid() > 0.5).long()
    tp = int((pred.bool() & (target == 1) & keep).sum())
    fp = int((pred.bool() & (target == 0) & keep).sum())
    fn = int((~pred.bool() & (target == 1) & keep).sum())
    assert results[0]["iou"].item() == pytest.approx(tp / (tp + fp + fn))
    assert results[0]["dice"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert results[0]["pet_fraction"].item() == pytest.approx((tp + fp) / int(keep.sum()))
    assert results[0]["true_fraction"].item() == pytest.approx((tp + fn) / int(keep.sum()))


def test_fit_and_validate_log_the_named_metrics(tiny_config, tmp_path):
    cfg = tiny_config
    pl.seed_everything(0, verbose=False)
    module = SegmentationModule(cfg)
    datamodule = PetsDataModule(cfg)
    trainer = make_trainer(cfg, tmp_path, logger=False, checkpoint=False, enable_progress_bar=False,
                           enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    names = {stage_metric("val", n) for n in EVAL_METRICS}
    assert SWEEP_METRIC in names
    assert names == {"val/iou", "val/per_image_iou", "val/dice", "val/per_image_dice", "val/loss",
                     "val/pet_fraction", "val/true_fraction"}
    assert names <= set(trainer.callback_metrics)

    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert len(results) == 1
    logged = results[0]
    assert names <= set(logged)
    for name in (SWEEP_METRIC, stage_metric("val", "per_image_iou"), stage_metric("val", "dice")):
        assert 0.0 <= logged[name] <= 1.0, name
    assert logged[stage_metric("val", "loss")] >= 0.0

    # the logged IoU is the metric of the validation split recomputed directly
    module.eval()
    metric = BinarySegMetrics()
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            metric.update(module(batch["image"]), batch["mask"])
    assert logged[SWEEP_METRIC] == pytest.approx(metric.compute()["iou"].item(), abs=1e-6)
