"""Where a run computes, resolved from its config once: the GPU defaults (bf16 or 16-bit mixed precision,
channels-last) and, on the CPU, full precision in the default memory format."""
from __future__ import annotations

import torch

from segcore.config import TrainConfig


def on_gpu(cfg: TrainConfig) -> bool:
    return torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")


def channels_last_of(cfg: TrainConfig) -> bool:
    """``channels_last``, or by default (None) on a GPU: NHWC convolutions run on tensor cores; on a CPU NCHW is as
    fast or faster for these networks."""
    return on_gpu(cfg) if cfg.channels_last is None else cfg.channels_last
