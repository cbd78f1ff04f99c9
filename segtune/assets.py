"""Assets prepared once by the driver and shipped to trials through Ray's object store.

The driver checks and decodes the dataset at every image size the space can draw, and fetches the pretrained
weights of every encoder (downloads and decoding happen under file locks, once per host). Trials receive the decoded
arrays and encoder state dicts from the object store: they never download, never decode, and need no shared
filesystem. On one node the arrays are shared memory (zero-copy), so concurrent trials do not multiply RAM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from segcore.config import TrainConfig
from segcore.data.decoded import DecodedSplit

if TYPE_CHECKING:  # the driver builds the assets while its Ray starts: torch only for pretrained weights
    import torch


@dataclass
class SweepAssets:
    decoded: dict[int, DecodedSplit] = field(default_factory=dict)  # image size -> decoded trainval split
    encoders: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)  # (encoder, weights)

    def data_for(self, cfg: TrainConfig) -> dict[str, DecodedSplit]:
        return {"trainval": self.decoded[cfg.image_size]}

    def encoder_for(self, cfg: TrainConfig) -> Optional[dict[str, torch.Tensor]]:
        return self.encoders.get((cfg.encoder, cfg.encoder_weights))


def build_assets(configs: list[TrainConfig], data: bool = True
                 ) -> tuple[SweepAssets, dict[int, DecodedSplit], list[str], Optional[list[str]]]:
    """Check + decode the data at each image size (unless ``data`` is False) and fetch each encoder's weights;
    returns the trials' assets, the test split at each size (memory-mapped, for the final test only), notes for the
    plan, and the data's classes (a generic layout's; None for Oxford-IIIT Pet, whose classes follow ``border``)."""
    import numpy as np

    from segcore.data.dataset import check_dataset, classes_for

    assets, tests, notes, classes = SweepAssets(), {}, [], None
    for size in sorted({c.image_size for c in configs}) if data else []:
        cfg = next(c for c in configs if c.image_size == size)
        decoded: dict[str, DecodedSplit] = {}
        # test too: the final test
        summary = check_dataset(cfg.data_dir, size, cfg.val_fraction, cfg.test_fraction, cfg.seed, decoded)
        classes = classes_for(cfg.classes, summary, cfg.data_dir)
        tests[size] = decoded["test"]
        trainval = decoded["trainval"]
        # plain arrays (not memory maps) so they travel through the object store to any node
        assets.decoded[size] = DecodedSplit(trainval.names, np.ascontiguousarray(trainval.images),
                                            np.ascontiguousarray(trainval.labels),
                                            labels_are_classes=trainval.labels_are_classes, n_train=trainval.n_train)
        lines = summary.plan_lines(size)
        notes += lines if not notes else lines[:1]  # the classes once: the same at every size
    for encoder, weights in sorted({(c.encoder, c.encoder_weights) for c in configs}):
        if weights != "none":
            from segcore.weights import encoder_state  # torch and SMP

            assets.encoders[(encoder, weights)] = encoder_state(encoder, weights)
        notes.append(f"weights {encoder}: {weights}")
    return assets, tests, notes, classes
