"""What the driver prepares before any trial starts: the --set values, the trials' shared config, the dataset."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

import yaml

from segcore.config import TrainConfig
from segcore.errors import UserError
from segtune.spaces import Space, to_config_values


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; values are read as YAML scalars (``1e-3``, ``true``, ``unet``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def base_config(space: Space, data_dir: Path, max_epochs: int) -> dict[str, Any]:
    """Values every trial shares: config defaults, the data location and the epoch budget.

    The space's fixed values travel in the param space (so they show in TensorBoard's HParams); this is the rest.
    """
    if "epochs" in space.fixed or "epochs" in space.searched:
        raise UserError(f"search space {space.path}: key 'epochs': set the budget with --max-epochs instead")
    if "data_dir" in space.fixed or "data_dir" in space.searched:
        raise UserError(f"search space {space.path}: key 'data_dir': use --data-dir instead")
    defaults = TrainConfig().to_dict()
    # trials read the decoded cache in-process: loader worker processes would only add start-up time
    defaults.update(data_dir=str(data_dir.resolve()), epochs=max_epochs, num_workers=0)
    return defaults


def candidate_configs(space: Space, base: dict[str, Any]) -> list[TrainConfig]:
    """One config per distinct value of every key that changes what the driver must prepare."""
    fixed = to_config_values({k: v for k, v in space.fixed.items()})
    configs, problems = [], []
    for size, encoder, weights, arch in itertools.product(*(space.values_of(k) for k in
                                                            ("image_size", "encoder", "encoder_weights", "arch"))):
        values = {**base, **fixed, "image_size": size, "encoder": encoder, "encoder_weights": weights, "arch": arch}
        try:  # every arch x encoder x size pairing a trial may draw must build
            configs.append(TrainConfig.from_dict(values, source=str(space.path)))
        except UserError as err:
            problems += err.problems
    if problems:
        raise UserError(f"search space {space.path}:", list(dict.fromkeys(problems)))
    return configs


def ensure_dataset(data_dir: Path, synthetic: bool, download: bool, synthetic_images: int,
                   dry_run: bool = False, synthetic_layout: str = "pets") -> Optional[str]:
    """Generate or download the dataset when asked and absent. In a dry run nothing is fetched: returns what
    would happen instead (and the data check is then skipped)."""
    from segcore.data.dataset import find_dataset

    if dry_run:
        try:
            find_dataset(data_dir)
            return None
        except UserError:
            if synthetic or download:
                return f"dataset: {data_dir} is empty; it would be {'generated' if synthetic else 'downloaded'}"
            raise
    if synthetic:
        try:
            find_dataset(data_dir)
            return  # already holds a dataset: use it, never overwrite
        except UserError:
            if synthetic_layout == "folder":
                from segcore.synthetic_folder import CLASSES, generate_folder

                generate_folder(data_dir, num=synthetic_images, seed=0)
                print(f"generated a stand-in folder of {synthetic_images} images with {len(CLASSES)} classes "
                      f"({', '.join(CLASSES)}) in {data_dir}")
                return
            from segcore.synthetic import generate

            generate(data_dir, num=synthetic_images, seed=0, min_size=64, max_size=128)
            print(f"generated a synthetic Oxford-IIIT Pet stand-in of {synthetic_images} images in {data_dir}")
    elif download:
        from segcore.data.download import download_pets

        download_pets(data_dir)
