"""Oxford-IIIT Pet for binary pet / background segmentation, in the official layout.

``root/images/<Name>_<n>.jpg``, ``root/annotations/trimaps/<Name>_<n>.png``, ``root/annotations/{trainval,test}.txt``
(also found under ``root/oxford-iiit-pet/``, where torchvision puts it). Each split is decoded and resized once into a
cache of uint8 arrays (see ``segcore.decoded``); items are then views of those arrays, augmented as tensors.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from segcore.config import TrainConfig
from segcore.decoded import VALID_TRIMAP_VALUES, DecodedSplit
from segcore.losses import IGNORE_INDEX
from segcore.pets_files import (  # noqa: F401 (re-exported: the module's public names since before)
    SPLIT_FILES,
    DataSummary,
    check_splits,
    find_root,
    layout_complete,
    read_split,
    split_trainval,
)

log = logging.getLogger(__name__)


def trimap_lut(border: str) -> np.ndarray:
    """Trimap value -> mask value: 1 pet -> 1, 2 background -> 0, 3 border -> 1 / 0 / ignored."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1] = 1
    lut[3] = {"pet": 1, "background": 0, "ignore": IGNORE_INDEX}[border]
    return lut


class PetsSegmentation(Dataset):
    """Items ``{"image": uint8 (3, S, S), "mask": uint8 (1, S, S)}`` from a decoded split.

    The DataLoader asks for a whole batch at once (``__getitems__``): one fancy-index copy of the image and trimap
    rows, one uint8 table lookup, and the flips done on the batch tensor. Per-item work (``__getitem__``, then
    collating) costs more than a small model's step on a CPU; batched, the loader is a memory copy.
    """

    def __init__(self, decoded: DecodedSplit, indices: np.ndarray, border: str = "pet", augment: bool = False):
        self.decoded = decoded
        self.indices = np.asarray(indices)
        self.lut = trimap_lut(border)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([i])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        # fancy indexing copies: the cache stays read-only and shared, the batch is the loader's own
        images = self.decoded.images[rows]
        masks = trimaps_to_masks(self.decoded.trimaps[rows], self.lut)[:, None]
        if self.augment:  # horizontal flip of a random half: pets are left/right symmetric
            flip = np.flatnonzero(torch.rand(len(rows)).numpy() < 0.5)
            images[flip] = images[flip, ..., ::-1]
            masks[flip] = masks[flip, ..., ::-1]
        return {"image": torch.from_numpy(images), "mask": torch.from_numpy(masks)}


def trimaps_to_masks(trimaps: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[trimaps]`` for trimaps holding only 1, 2 and 3 (checked when decoded): three vectorised compares are
    several times faster than a 256-entry table lookup, which widens every index to 64 bits."""
    masks = np.zeros_like(trimaps)
    for value in VALID_TRIMAP_VALUES:
        if lut[value]:
            masks += (trimaps == value).view(np.uint8) * lut[value]
    return masks


def collate(batch: Any) -> Any:
    """Batches from ``__getitems__`` arrive whole; anything else (a list of items) is collated as usual."""
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)


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
        """Whether the fit's batches are cut on ``device`` from splits held there (segcore.device_data) rather than
        copied from the host loader, and why (for the device line). Needs ``setup("fit")``."""
        from segcore.device_data import choose, split_bytes

        nbytes = split_bytes(self.train_set) + split_bytes(self.val_set)
        return choose(self.cfg.data_path, nbytes, torch.device(device), world_size, self.device_share)

    def prepare_data(self) -> None:
        if self.download:
            from segcore.download import download_pets

            download_pets(self.cfg.data_dir)

    def layout_complete(self, splits: tuple[str, ...] = SPLIT_FILES) -> bool:
        """Whether the folder, the split files and every file they list are there (``segcore.pets_files``)."""
        return layout_complete(self.cfg.data_dir, splits)

    def check(self, splits: tuple[str, ...] = SPLIT_FILES) -> DataSummary:
        """Read, check and decode every split before training: all problems are reported in one UserError."""
        return check_splits(self.cfg.data_dir, self.cfg.image_size, self.cfg.val_fraction, self.cfg.seed,
                            self.decoded, splits)

    def setup(self, stage: Optional[str] = None) -> None:
        splits = ("trainval",) if stage in ("fit", "validate") else ("test",) if stage == "test" else SPLIT_FILES
        if not all(s in self.decoded for s in splits):
            self.check(splits)
        if "trainval" in self.decoded:
            train_idx, val_idx = split_trainval(len(self.decoded["trainval"]), self.cfg.val_fraction, self.cfg.seed)
            self.train_set = PetsSegmentation(self.decoded["trainval"], train_idx, self.cfg.border, augment=True)
            self.val_set = PetsSegmentation(self.decoded["trainval"], val_idx, self.cfg.border)
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
                    from segcore.device_data import DeviceBatches

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

