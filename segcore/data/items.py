"""A decoded split as a batched torch Dataset: items ``{"image", "mask"}`` cut from its uint8 arrays (Pets' trimap
mapped to the classes trained on, a generic layout's classes as they are), flips as augmentation. Shared by the host
loader (``segcore.data.datamodule``) and the device-resident path (``segcore.data.device_batches``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from segcore.data.decoded import VALID_TRIMAP_VALUES, DecodedSplit
from segcore.losses import IGNORE_INDEX


def trimap_lut(border: str) -> np.ndarray:
    """Trimap value -> mask value: 1 pet -> 1, 2 background -> 0, 3 border -> 1 / 0 / ignored / its own class 2
    (``segcore.config.PETS_TRIMAP_CLASSES``)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1] = 1
    lut[3] = {"pet": 1, "background": 0, "ignore": IGNORE_INDEX, "class": 2}[border]
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
        self.lut = decoded.lut if decoded.lut is not None else trimap_lut(border)
        self.trimaps = decoded.lut is None
        self.augment = augment

    def masks(self, rows: np.ndarray) -> np.ndarray:
        """The masks (len(rows), 1, S, S) of these rows of the decoded split: a copy, the cache stays read-only."""
        labels = self.decoded.labels[rows]  # fancy indexing copies
        return (trimaps_to_masks(labels, self.lut) if self.trimaps else self.lut[labels])[:, None]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([i])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        # fancy indexing copies: the cache stays read-only and shared, the batch is the loader's own
        images = self.decoded.images[rows]
        masks = self.masks(rows)
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
