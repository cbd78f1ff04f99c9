"""One Tune trial: a segcore training run that reports every epoch to Tune with a checkpoint to resume from."""
from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from ray import tune
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

from segcore.config import TrainConfig
from segcore.data import PetsDataModule
from segcore.train import build_module, describe_device, make_trainer, quiet_lightning
from segtune.spaces import to_config_values

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.ckpt"


def trial_config(params: dict[str, Any], base: dict[str, Any]) -> TrainConfig:
    """The sampled ``params`` over the sweep's fixed ``base`` values: the whole config of one trial."""
    return TrainConfig.from_dict({**base, **to_config_values(params)}, source="trial config")


def train_trial(params: dict[str, Any], base: dict[str, Any], cpus: float) -> None:
    quiet_lightning()
    torch.set_num_threads(max(1, int(cpus)))  # the trial's CPU share, not the whole node
    cfg = trial_config(params, base)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = PetsDataModule(cfg)  # the driver has checked and decoded the data: this only maps the cache
    module = build_module(cfg)
    log.info("%s on %s", describe_device(cfg), socket.gethostname())
    report = TuneReportCheckpointCallback(filename=CHECKPOINT_FILE, on="train_epoch_end")
    trainer = make_trainer(cfg, None, callbacks=[report], logger=False, checkpoint=False,
                           enable_progress_bar=False, enable_model_summary=False)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer.fit(module, datamodule=datamodule)
        return
    with checkpoint.as_directory() as folder:  # an interrupted trial continues from its last epoch
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(Path(folder) / CHECKPOINT_FILE))
