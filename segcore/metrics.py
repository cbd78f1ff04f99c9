"""Segmentation metrics exactly as SMP defines them, accumulated over an epoch (and across DDP ranks).

Dataset IoU is SMP's "micro" reduction (pixels of all images pooled); per-image IoU is "micro-imagewise" (IoU of
each image, then the mean). Per-image confusion counts are kept so both come from the same numbers.

``pet_fraction`` is the share of the (not ignored) pixels predicted pet (the foreground), ``true_fraction`` the share
that is: a prediction share near 0 or 1 where the truth's is not, and the model predicts one class everywhere,
whatever its IoU says (segtune names such a trial collapsed).
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
            "true_fraction": (tp + fn).sum() / counted.clamp(min=1),
        }


class MultiClassSegMetrics(Metric):
    """Mean IoU over classes, from one confusion matrix accumulated over the epoch (summed across DDP ranks).

    The convention is MMSegmentation's ``IoUMetric``, chosen on purpose: pixels labelled 255 are left out; a class
    absent from both truth and prediction over the whole split has no IoU (NaN) and is left out of the mean, rather
    than scored 1.0 as SMP's "macro" reduction (``zero_division=1``) would score it. SMP's "micro" reduction on argmax
    predictions is not mean IoU at all (it equals accuracy / (2 - accuracy)), so it is not used here.

    ``compute`` gives ``iou`` (the mean), ``acc`` (pixel accuracy), ``dice`` (mean Dice, same convention) and
    ``per_class_iou`` (a tensor, NaN for a skipped class)."""
    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes {num_classes}: a segmentation has at least 2 classes")
        self.num_classes = num_classes
        self.add_state("confusion", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``logits`` (B, C, H, W); ``target`` (B, H, W) or (B, 1, H, W) of class indices, 255 = ignore."""
        pred = logits.detach().argmax(dim=1)
        target = target.reshape(pred.shape).long()
        kept = target != IGNORE_INDEX
        if (target[kept] >= self.num_classes).any() or (target[kept] < 0).any():
            raise ValueError(f"target values outside 0-{self.num_classes - 1} and {IGNORE_INDEX}")
        cells = target[kept] * self.num_classes + pred[kept]
        self.confusion += torch.bincount(cells, minlength=self.num_classes ** 2).view(self.num_classes,
                                                                                        self.num_classes)

    def compute(self) -> dict[str, torch.Tensor]:
        confusion = self.confusion.double()
        tp = confusion.diagonal()
        fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
        union = tp + fp + fn
        nan = torch.tensor(float("nan"), dtype=torch.double, device=confusion.device)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
        total = confusion.sum()
        return {"iou": iou.nanmean().float(), "dice": dice.nanmean().float(),
                "acc": (tp.sum() / total.clamp(min=1)).float(), "per_class_iou": iou.float()}
