"""The Lightning DataModule over a dataset's decoded splits (Oxford-IIIT Pet or a generic layout:
``segcore.data.dataset``): which split feeds which stage, and from where batches come (the host loader, or cut on the
device: ``segcore.data.device_batches``).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from segcore.config import TrainConfig
from segcore.data.dataset import SPLIT_FILES, check_dataset, dataset_complete
from segcore.data.decoded import DecodedSplit
from segcore.data.items import PetsSegmentation, collate
from segcore.data.pets import split_trainval
from segcore.data.summary import DataSummary

log = logging.getLogger(__name__)


class PetsDataModule(pl.LightningDataModule):
    def __init__(self, config: TrainConfig, download: bool = False, pin_memory: Optional[bool] = None,
                 decoded: Optional[dict[str, DecodedSplit]] = None, device_share: float = 1.0):
        """``decoded``: splits decoded elsewhere (e.g. by a sweep's driver, shipped to another node); with it the
        data dir is not read at all. ``device_share``: the part of its device this run may fill (a trial holding a
        fraction of a GPU), for the choice of the data path (``data_path``)."""
        super().__init__()
        self.cfg = config
        self.download = download
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.decoded: dict[str, DecodedSplit] = dict(decoded or {})
        self.device_share = device_share
        self._on_device: dict[str, Any] = {}  # split -> its DeviceBatches, uploaded once

    def data_path(self, device: torch.device, world_size: int = 1) -> tuple[bool, str]:
        """Whether the fit's batches are cut on ``device`` from splits held there (segcore.data.device_batches) rather
        than copied from the host loader, and why (for the device line). Needs ``setup("fit")``."""
        from segcore.data.device_batches import choose, split_bytes

        nbytes = split_bytes(self.train_set) + split_bytes(self.val_set)
        return choose(self.cfg.data_path, nbytes, torch.device(device), world_size, self.device_share)

    def prepare_data(self) -> None:
        if self.download:
            from segcore.data.download import download_pets

            download_pets(self.cfg.data_dir)

    def layout_complete(self) -> bool:
        """Whether the folder and every file its layout lists are there (``segcore.data.dataset``)."""
        return dataset_complete(self.cfg.data_dir)

    def check(self, splits: tuple[str, ...] = SPLIT_FILES) -> DataSummary:
        """Read, check and decode every split before training: all problems are reported in one UserError. A
        generic layout's classes are in the summary: the config to train with names them (``classes``)."""
        return check_dataset(self.cfg.data_dir, self.cfg.image_size, self.cfg.val_fraction, self.cfg.test_fraction,
                             self.cfg.seed, self.decoded, splits)

    def setup(self, stage: Optional[str] = None) -> None:
        splits = ("trainval",) if stage in ("fit", "validate") else ("test",) if stage == "test" else SPLIT_FILES
        if not all(s in self.decoded for s in splits):
            self.check(splits)
        if "trainval" in self.decoded:
            trainval = self.decoded["trainval"]
            if trainval.n_train is None:
                train_idx, val_idx = split_trainval(len(trainval), self.cfg.val_fraction, self.cfg.seed)
            else:  # the layout's own train and val splits, one after the other
                train_idx, val_idx = np.arange(trainval.n_train), np.arange(trainval.n_train, len(trainval))
            self.train_set = PetsSegmentation(trainval, train_idx, self.cfg.border, augment=True)
            self.val_set = PetsSegmentation(trainval, val_idx, self.cfg.border)
        if "test" in self.decoded:
            test = self.decoded["test"]
            self.test_set = PetsSegmentation(test, np.arange(len(test)), self.cfg.border)

    def _loader(self, dataset: Dataset, shuffle: bool, split: str = "test"):
        workers = self.cfg.num_workers
        # Under DDP each process sees its share of the set: dropping the last partial batch of a share smaller than
        # one batch would leave an epoch with no step at all (and a trial that never reports).
        ranks = self.trainer.world_size if self.trainer is not None else 1
        share = -(-len(dataset) // ranks)
        drop_last = shuffle and share > self.cfg.batch_size
        if split in ("train", "val") and self.trainer is not None:
            device = self.trainer.strategy.root_device
            if self.data_path(device, ranks)[0]:
                if split not in self._on_device:
                    from segcore.data.device_batches import DeviceBatches

                    self._on_device[split] = DeviceBatches(dataset, device, self.cfg.batch_size, shuffle, drop_last)
                return self._on_device[split]
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
                          collate_fn=collate, pin_memory=self.pin_memory, persistent_workers=workers > 0,
                          drop_last=drop_last)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, split="train")

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False, split="val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

