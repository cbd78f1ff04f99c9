"""A decoded split held on the training device, cut into batches there: the data path of a GPU trial whose split fits.

On a GPU an epoch of Oxford-IIIT Pet at 256 px takes seconds, and the loader path copies every batch from host to
device. When a split fits in a fraction of the device's memory (trainval at 256 px is about 0.7 GB of images as
uint8, plus a quarter of that in masks), it is uploaded once and each batch is an index-select and a flip on the
device: no host-to-device copy per batch and no host sync per step (the epoch's order and flips are drawn on the host
once per epoch and copied in one go).

The batches are the loader path's: ``DeviceBatches`` draws from torch's global generator exactly as a
``DataLoader`` over ``PetsSegmentation`` with the same shuffle, batch size and ``drop_last`` does (the iterator's
base seed, the sampler's seed, then each batch's flips), so with the same RNG state both paths give the same batches.
On the CPU the same code runs (device "cpu"), which is how the tests compare them.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from segcore.data.items import PetsSegmentation
from segcore.errors import UserError

# the share of the device's memory a split may take to be held there (the model, activations and optimizer state
# need the rest)
DEVICE_DATA_FRACTION = 0.25


def split_bytes(dataset: PetsSegmentation) -> int:
    """What ``dataset``'s images and masks take as uint8 once uploaded."""
    _, channels, height, width = dataset.decoded.images.shape
    return len(dataset) * (channels + 1) * height * width


def choose(asked: str, nbytes: int, device: torch.device, world_size: int = 1, share: float = 1.0) -> tuple[bool, str]:
    """Whether batches are cut on ``device`` (``asked``: a config's ``data_path``), and why, for the device line.
    ``share``: the part of the device this run may use (a trial with a fraction of a GPU), ``nbytes``: what the
    splits take there."""
    size = f"{nbytes / 2**20:.0f} MB"
    if asked == "loader":
        return False, "host loader (data_path=loader)"
    if world_size > 1:
        if asked == "device":
            raise UserError("key 'data_path': 'device' holds the whole split in one process; with several DDP "
                            "processes use auto or loader (each rank then loads its own share)")
        return False, "host loader (DDP: each process loads its share)"
    if asked == "device":
        return True, f"held on {device} ({size}; data_path=device)"
    if device.type != "cuda":
        return False, "host loader (CPU: a batch is a copy from memory either way)"
    allowed = DEVICE_DATA_FRACTION * share * torch.cuda.get_device_properties(device).total_memory
    if nbytes <= allowed:
        return True, f"held on the GPU ({size}; up to {allowed / 2**20:.0f} MB allowed), batches cut there"
    return False, f"host loader (the split, {size}, is more than the {allowed / 2**20:.0f} MB allowed on the GPU)"


class DeviceBatches:
    """An iterable of ``{"image": uint8 (B, 3, S, S), "mask": uint8 (B, 1, S, S)}`` batches on ``device``, the same
    batches a ``DataLoader(dataset, batch_size, shuffle, drop_last, collate_fn=segcore.data.items.collate)`` gives."""

    def __init__(self, dataset: PetsSegmentation, device: torch.device, batch_size: int, shuffle: bool,
                 drop_last: bool):
        rows = dataset.indices
        masks = dataset.masks(rows)
        # one upload per split (fancy indexing copies the rows out of the memory-mapped cache)
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.decoded.images[rows])).to(device)
        self.masks = torch.from_numpy(masks).to(device)
        self.device = torch.device(device)
        self.augment = dataset.augment
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_draws(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """This epoch's order and flips, drawn from the global generator in the DataLoader path's order."""
        n = len(self.images)
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed (its workers' seeds)
        if self.shuffle:  # RandomSampler: a seed from the global generator, then a permutation from its own
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        order = order[:len(self) * self.batch_size] if self.drop_last else order
        flips = None
        if self.augment:  # PetsSegmentation draws one number per item of each batch, batch after batch
            flips = torch.cat([torch.rand(len(chunk)) < 0.5 for chunk in order.split(self.batch_size)])
        return order, flips

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order, flips = self._epoch_draws()
        non_blocking = self.device.type == "cuda"
        order = order.to(self.device, non_blocking=non_blocking)  # one small copy per epoch
        flips = flips.to(self.device, non_blocking=non_blocking) if flips is not None else None
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            images, masks = self.images.index_select(0, rows), self.masks.index_select(0, rows)
            if flips is not None:
                flip = flips[start:start + self.batch_size].view(-1, 1, 1, 1)
                images = torch.where(flip, images.flip(-1), images)
                masks = torch.where(flip, masks.flip(-1), masks)
            yield {"image": images, "mask": masks}
