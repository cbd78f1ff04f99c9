"""Loss functions by name, all from ``smp.losses`` on logits: binary mode for two classes (one logit, a float mask
(B, 1, H, W)), multi-class mode for more (one logit per class, class indices (B, H, W); "bce" is then cross-entropy,
SMP's ``SoftCrossEntropyLoss``)."""
from __future__ import annotations

from typing import Optional

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segcore.config import IGNORE_INDEX  # noqa: F401  (the losses' ignore_index, named where it is defined)


class SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def build_loss(name: str, ignore_index: Optional[int] = None, num_classes: int = 2) -> nn.Module:
    mode = "binary" if num_classes <= 2 else "multiclass"
    if mode == "multiclass":  # SoftCrossEntropyLoss takes an int: -100 is torch's "nothing ignored"
        cross_entropy = lambda: smp.losses.SoftCrossEntropyLoss(  # noqa: E731
            smooth_factor=0.0, ignore_index=-100 if ignore_index is None else ignore_index)
    else:
        cross_entropy = lambda: smp.losses.SoftBCEWithLogitsLoss(ignore_index=ignore_index)  # noqa: E731
    builders = {
        "bce": cross_entropy,
        "dice": lambda: smp.losses.DiceLoss(mode, from_logits=True, ignore_index=ignore_index),
        "focal": lambda: smp.losses.FocalLoss(mode, ignore_index=ignore_index),
        "jaccard": lambda: smp.losses.JaccardLoss(mode, from_logits=True, ignore_index=ignore_index),
        "dice+bce": lambda: SumOfLosses(build_loss("dice", ignore_index, num_classes),
                                        build_loss("bce", ignore_index, num_classes)),
    }
    return builders[name]()
