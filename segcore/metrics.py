"""Segmentation metrics exactly as SMP defines them, accumulated over an epoch (and across DDP ranks).

Dataset IoU is SMP's "micro" reduction (pixels of all images pooled); per-image IoU is "micro-imagewise" (IoU of
each image, then the mean). Per-image confusion counts are kept so both come from the same numbers.

``pet_fraction`` is the share of the (not ignored) pixels predicted pet: near 0 or 1, the model predicts one class
everywhere, whatever its IoU says (segtune names such a trial collapsed).
"""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from segcore.losses import IGNORE_INDEX


class BinarySegMetrics(Metric):
    full_state_update = False

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("ignored", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = (logits.detach().sigmoid() > self.threshold).long()
        target = target.long()
        ignored = target == IGNORE_INDEX
        # SMP's get_stats has no ignore_index in binary mode: zeroing both sides turns ignored pixels into
        # true negatives, which change neither IoU nor Dice.
        self.ignored += ignored.sum()
        pred = pred.masked_fill(ignored, 0)
        target = target.masked_fill(ignored, 0)
        tp, fp, fn, tn = smp.metrics.get_stats(pred, target, mode="binary")
        self.tp.append(tp)
        self.fp.append(fp)
        self.fn.append(fn)
        self.tn.append(tn)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn, tn = (dim_zero_cat(s) for s in (self.tp, self.fp, self.fn, self.tn))
        counted = (tp + fp + fn + tn).sum() - self.ignored  # ignored pixels were counted as true negatives
        return {
            "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"),
            "per_image_iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise"),
            "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro"),
            "per_image_dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise"),
            "pet_fraction": (tp + fp).sum() / counted.clamp(min=1),
        }
