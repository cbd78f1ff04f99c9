"""Loss functions by name, all from ``smp.losses`` in binary mode on logits."""
from __future__ import annotations

from typing import Optional

import segmentation_models_pytorch as smp
import torch
from torch import nn

IGNORE_INDEX = 255  # mask value of pixels left out of loss and metrics (trimap border with border=ignore)


class SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def build_loss(name: str, ignore_index: Optional[int] = None) -> nn.Module:
    builders = {
        "bce": lambda: smp.losses.SoftBCEWithLogitsLoss(ignore_index=ignore_index),
        "dice": lambda: smp.losses.DiceLoss("binary", from_logits=True, ignore_index=ignore_index),
        "focal": lambda: smp.losses.FocalLoss("binary", ignore_index=ignore_index),
        "jaccard": lambda: smp.losses.JaccardLoss("binary", from_logits=True, ignore_index=ignore_index),
        "dice+bce": lambda: SumOfLosses(build_loss("dice", ignore_index), build_loss("bce", ignore_index)),
    }
    return builders[name]()
