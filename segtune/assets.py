"""Assets prepared once by the driver for the trials: the decoded data and the encoders' pretrained weights.

The driver checks and decodes the dataset at every image size the space can draw, and fetches the pretrained
weights of every encoder (downloads and decoding happen under file locks, once per host). The weights always travel
through Ray's object store. The decoded data takes one of two paths, chosen once Ray is up (``choose_data_path``),
said in the plan:

- **object store** (the data fits in ``OBJECT_STORE_SHARE`` of the smallest node's object store): trials receive
  the arrays from the object store; they never read the data folder, never decode, and need no shared filesystem.
  On one node the arrays are shared memory (zero-copy), so concurrent trials do not multiply RAM.
- **node cache** (larger: a user's 10,000 images at 512 px are about 10 GB decoded): nothing of it travels. Each
  trial checks the data folder on its node and memory-maps the decoded cache on that node's local disk
  (``$SEGCORE_CACHE_DIR``), made once per node under a file lock (segcore.data.decoded): the same arrays, the same
  batches, and pages shared by every trial of the node. The data folder must then be readable on every node.

``SEGSWEEP_DATA_BUDGET_MB`` sets the budget instead of the object store's size (a test forces the node cache with it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from segcore.config import TrainConfig
from segcore.data.decoded import DecodedSplit

if TYPE_CHECKING:  # the driver builds the assets while its Ray starts: torch only for pretrained weights
    import torch

OBJECT_STORE_SHARE = 0.5  # of the smallest node's object store: checkpoints and results go through it too
BUDGET_ENV = "SEGSWEEP_DATA_BUDGET_MB"

# Splits a trial's process loaded from its node's cache: a worker process that runs several trials maps them once.
_NODE_CACHE: dict[tuple, DecodedSplit] = {}


@dataclass(frozen=True)
class DataRecipe:
    """What a trial needs to load the decoded splits on its own node: the data folder and how it is split."""
    data_dir: str
    val_fraction: float
    test_fraction: float
    seed: int

    def load(self, size: int, split: str = "trainval") -> DecodedSplit:
        """``split`` at ``size``, memory-mapped from this node's cache (decoded into it first where it is not)."""
        key = (self, size, split)
        if key not in _NODE_CACHE:
            from segcore.data.dataset import check_dataset

            decoded: dict[str, DecodedSplit] = {}
            check_dataset(self.data_dir, size, self.val_fraction, self.test_fraction, self.seed, decoded, (split,))
            _NODE_CACHE[key] = decoded[split]
        return _NODE_CACHE[key]


@dataclass
class SweepAssets:
    decoded: dict[int, DecodedSplit] = field(default_factory=dict)  # image size -> decoded trainval split
    encoders: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)  # (encoder, weights)
    recipe: Optional[DataRecipe] = None  # where the data came from
    node_cache: bool = False  # the node-cache path: trials load the data on their node with ``recipe``

    def data_for(self, cfg: TrainConfig) -> dict[str, DecodedSplit]:
        if self.node_cache:
            return {"trainval": self.recipe.load(cfg.image_size)}
        return {"trainval": self.decoded[cfg.image_size]}

    def encoder_for(self, cfg: TrainConfig) -> Optional[dict[str, torch.Tensor]]:
        return self.encoders.get((cfg.encoder, cfg.encoder_weights))

    def data_bytes(self) -> int:
        return sum(split.images.nbytes + split.labels.nbytes for split in self.decoded.values())


def data_budget() -> tuple[int, str]:
    """The bytes of decoded data that may travel through the object store, and where that figure comes from."""
    asked = os.environ.get(BUDGET_ENV)
    if asked:
        return int(float(asked) * 2**20), f"{BUDGET_ENV}={asked}"
    import ray

    stores = [node["Resources"].get("object_store_memory", 0) for node in ray.nodes() if node.get("Alive")]
    smallest = min(stores, default=0)
    return int(OBJECT_STORE_SHARE * smallest), (f"{OBJECT_STORE_SHARE:.0%} of the smallest node's object store, "
                                                f"{smallest / 2**30:.1f} GB")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MB" if nbytes >= 10 * 2**20 else f"{nbytes / 2**20:.2f} MB"


def choose_data_path(assets: SweepAssets) -> str:
    """Keep the decoded arrays for the object store, or drop them for the node-cache path; returns the plan's line
    saying which and why. Needs Ray (the object store's size)."""
    import numpy as np

    nbytes = assets.data_bytes()
    budget, source = data_budget()
    size = f"{_mb(nbytes)} decoded"
    if nbytes <= budget:
        # plain arrays, not memory maps, so that they travel through the object store to any node
        assets.decoded = {s: DecodedSplit(d.names, np.ascontiguousarray(d.images), np.ascontiguousarray(d.labels),
                                          lut=d.lut, n_train=d.n_train) for s, d in assets.decoded.items()}
        return f"data path: object store ({size}, within {_mb(budget)}: {source})"
    assets.decoded, assets.node_cache = {}, True
    return (f"data path: node cache ({size}, more than {_mb(budget)}: {source}): each node decodes "
            f"{assets.recipe.data_dir} once into its local cache and its trials memory-map it (the folder must be "
            "readable on every node)")


def build_assets(configs: list[TrainConfig], data: bool = True
                 ) -> tuple[SweepAssets, dict[int, DecodedSplit], list[str], Optional[list[str]]]:
    """Check + decode the data at each image size (unless ``data`` is False) and fetch each encoder's weights;
    returns the trials' assets (the decoded splits memory-mapped: ``choose_data_path`` decides how they travel),
    the test split at each size (memory-mapped, for the final test), notes for the plan, and the data's classes (a
    generic layout's; None for Oxford-IIIT Pet, whose classes follow ``border``)."""
    from segcore.data.dataset import check_dataset, classes_for

    assets, tests, notes, classes = SweepAssets(), {}, [], None
    for size in sorted({c.image_size for c in configs}) if data else []:
        cfg = next(c for c in configs if c.image_size == size)
        decoded: dict[str, DecodedSplit] = {}
        # test too: the final test
        summary = check_dataset(cfg.data_dir, size, cfg.val_fraction, cfg.test_fraction, cfg.seed, decoded)
        classes = classes_for(cfg.classes, summary, cfg.data_dir)
        tests[size] = decoded["test"]
        assets.decoded[size] = decoded["trainval"]
        assets.recipe = DataRecipe(cfg.data_dir, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        lines = summary.plan_lines(size)
        notes += lines if not notes else lines[:1]  # the classes once: the same at every size
    for encoder, weights in sorted({(c.encoder, c.encoder_weights) for c in configs}):
        if weights != "none":
            from segcore.weights import encoder_state  # torch and SMP

            assets.encoders[(encoder, weights)] = encoder_state(encoder, weights)
        notes.append(f"weights {encoder}: {weights}")
    return assets, tests, notes, classes
