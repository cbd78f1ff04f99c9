"""Oxford-IIIT Pet for binary pet / background segmentation, in the official layout.

``root/images/<Name>_<n>.jpg``, ``root/annotations/trimaps/<Name>_<n>.png``, ``root/annotations/{trainval,test}.txt``
(also found under ``root/oxford-iiit-pet/``, where torchvision puts it). Each split is decoded and resized once into a
cache of uint8 arrays (see ``segcore.decoded``); items are then views of those arrays, augmented as tensors.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from segcore.config import TrainConfig
from segcore.decoded import VALID_TRIMAP_VALUES, DecodedSplit, decode_split
from segcore.errors import UserError
from segcore.losses import IGNORE_INDEX

log = logging.getLogger(__name__)

SPLIT_FILES = ("trainval", "test")
MAX_PROBLEMS_LISTED = 50


def find_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding ``images/`` and ``annotations/``: ``data_dir`` itself or its ``oxford-iiit-pet/``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data dir {data_dir}: not found (use --download, or point --data_dir at the folder "
                        "holding images/ and annotations/)")
    for candidate in (data_dir, data_dir / "oxford-iiit-pet"):
        if (candidate / "annotations").is_dir() or (candidate / "images").is_dir():
            return candidate
    raise UserError(f"data dir {data_dir}: holds neither images/ + annotations/ nor oxford-iiit-pet/ "
                    "(the Oxford-IIIT Pet layout)")


def read_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    """Image names listed in ``annotations/<split>.txt`` and the problems found in that file."""
    path = root / "annotations" / f"{split}.txt"
    if not path.is_file():
        return [], [f"{path}: split file not found"]
    names, problems = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [f"{path}: not a UTF-8 text file"]
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split()[0]
        if "/" in name or "\\" in name or ".." in name or name.startswith("~"):
            problems.append(f"{path}:{lineno}: image name '{name}' contains a path separator or '..'")
            continue
        names.append(name)
    if not names and not problems:
        problems.append(f"{path}: lists no images")
    return names, problems


def split_trainval(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (by seed) train / validation indices into the trainval list."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


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


@dataclass
class DataSummary:
    root: Path
    train: int
    val: int
    test: int


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
        """Whether the folder, the split files and every file they list are there: what can be checked without
        decoding an image (``check`` does the rest, and reports every problem)."""
        try:
            root = find_root(self.cfg.data_dir)
        except UserError:
            return False
        for split in splits:
            names, problems = read_split(root, split)
            if problems or not all((root / "images" / f"{n}.jpg").is_file()
                                   and (root / "annotations" / "trimaps" / f"{n}.png").is_file() for n in names):
                return False
        return True

    def check(self, splits: tuple[str, ...] = SPLIT_FILES) -> DataSummary:
        """Read, check and decode every split before training: all problems are reported in one UserError."""
        root = find_root(self.cfg.data_dir)
        problems: list[str] = []
        listed: dict[str, list[str]] = {}
        for split in splits:
            names, split_problems = read_split(root, split)
            problems += split_problems
            listed[split] = names
            if names and split not in self.decoded:
                # decode even when other problems were found: the user gets every problem in one report
                decoded, decode_problems = decode_split(root, split, names, self.cfg.image_size)
                problems += decode_problems
                if not split_problems and decoded is not None:
                    self.decoded[split] = decoded
        if problems:
            shown = problems[:MAX_PROBLEMS_LISTED]
            more = len(problems) - len(shown)
            raise UserError(f"dataset {root}: {len(problems)} problem(s) found"
                            + (f" (first {len(shown)} listed)" if more else "") + ":", shown)
        n_trainval = len(listed.get("trainval", []))
        train_idx, val_idx = (split_trainval(n_trainval, self.cfg.val_fraction, self.cfg.seed) if n_trainval
                              else ([], []))
        return DataSummary(root, len(train_idx), len(val_idx), len(listed.get("test", [])))

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

