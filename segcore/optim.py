"""Optimizers and LR schedulers by name, each scheduler stepped at the interval it is defined for."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from segcore.config import TrainConfig
from segcore.metrics_names import SWEEP_METRIC, SWEEP_MODE


def build_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # config validation makes this unreachable


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Optional[dict[str, Any]]:
    """Lightning's lr_scheduler config dict (scheduler + interval [+ monitor]), or None for a constant LR."""
    total_steps = max(1, int(total_steps))
    steps_per_epoch = max(1, total_steps // cfg.epochs)
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return {"scheduler": sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), "interval": "epoch"}
    if cfg.scheduler == "exponential":
        # decay per epoch chosen so that the LR has fallen by `gamma` after `epochs` epochs
        factor = cfg.gamma ** (1.0 / cfg.epochs)
        return {"scheduler": sched.ExponentialLR(optimizer, gamma=factor), "interval": "epoch"}
    if cfg.scheduler == "cosine":
        # as in SMP's Oxford Pet example: one cosine over every optimizer step, floored at 1 % of the peak LR
        return {"scheduler": sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.lr * 0.01),
                "interval": "step"}
    if cfg.scheduler == "onecycle":
        one_cycle = sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                     cycle_momentum=cfg.optimizer == "sgd" and cfg.momentum > 0)
        return {"scheduler": one_cycle, "interval": "step"}
    if cfg.scheduler == "cyclic":
        # triangular2 cycles of two epochs between lr/10 and lr; momentum cycles only where SGD has one
        return {"scheduler": sched.CyclicLR(optimizer, base_lr=cfg.lr / 10, max_lr=cfg.lr,
                                            step_size_up=steps_per_epoch, mode="triangular2",
                                            cycle_momentum=cfg.optimizer == "sgd" and cfg.momentum > 0),
                "interval": "step"}
    if cfg.scheduler == "plateau":
        return {"scheduler": sched.ReduceLROnPlateau(optimizer, mode=SWEEP_MODE, factor=cfg.gamma,
                                                     patience=cfg.plateau_patience),
                "interval": "epoch", "monitor": SWEEP_METRIC}
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}")
