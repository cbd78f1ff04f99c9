"""segcore's data, by role:

- ``pets``: the Oxford-IIIT Pet layout (where the files are, its split files, the check that reads every file);
- ``download``: fetching Oxford-IIIT Pet into that layout;
- ``decoded``: each split decoded and resized once into uint8 arrays cached on disk (memory-mapped);
- ``items``: a decoded split as a batched torch Dataset (mask from the trimap, flips);
- ``device_batches``: a decoded split held on the training device and cut into batches there;
- ``datamodule``: the Lightning DataModule that puts them together.

``pets``, ``download`` and ``decoded`` import neither torch nor Lightning (a sweep's driver checks the data with them
while its Ray starts). The names below are the package's public ones since it was one module (``segcore.data``);
each is imported from its module on first use, so importing the package imports nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "PetsDataModule": "datamodule",
    "PetsSegmentation": "items", "collate": "items", "trimap_lut": "items", "trimaps_to_masks": "items",
    "SPLIT_FILES": "pets", "DataSummary": "pets", "check_splits": "pets", "find_root": "pets",
    "layout_complete": "pets", "read_split": "pets", "split_trainval": "pets",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
