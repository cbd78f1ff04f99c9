"""The final test: the sweep's best checkpoint evaluated once on the test split, after the sweep.

It runs as a Ray task with one trial's resources (so on a GPU node when trials use GPUs), on the test split the
driver decoded before launch; the checkpoint is read wherever the sweep stored it (shared folder or URI).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segcore.data.decoded import DecodedSplit
from segcore.metrics_names import class_metric, eval_metrics, stage_metric
from segtune.assets import DataRecipe
from segtune.results import checkpoint_location, finite
from segtune.storage import CHECKPOINT_FILE, TEST_METRICS_FILE, write_text_atomic


def evaluate(checkpoint_file: str, test: DecodedSplit) -> dict[str, Any]:
    """segcore's own test step on ``test`` with the module in ``checkpoint_file``: the test metrics of its classes
    (two: dataset and per-image IoU and Dice; more: mean IoU, pixel accuracy, Dice and ``per_class_iou``
    ``{class name: IoU}``, None for a class absent from truth and prediction), and the loss. Runs wherever it is
    called (a GPU if one is visible), at the precision the trial trained at (its config's, resolved on this device
    as the trial resolved it)."""
    from segcore.build import load_module, quiet_lightning, test_trainer
    from segcore.data.datamodule import PetsDataModule

    quiet_lightning(placed=True)
    module = load_module(Path(checkpoint_file))
    cfg = module.cfg.replace(num_workers=0)
    datamodule = PetsDataModule(cfg, decoded={"test": test})
    metrics = test_trainer(cfg).test(module, datamodule=datamodule, verbose=False)[0]
    names = [stage_metric("test", m) for m in eval_metrics(cfg.class_names)]
    out = {"images": len(test), "image_size": cfg.image_size, **{k: float(metrics[k]) for k in names}}
    if cfg.num_classes > 2:
        # None (JSON has no NaN) for a class absent from truth and prediction
        out["per_class_iou"] = {name: finite(out.pop(stage_metric("test", class_metric(name))))
                                for name in cfg.class_names}
    return out


def run_final_test(checkpoint, test: DecodedSplit | DataRecipe, image_size: int, cpus: float, gpus: float,
                   experiment_dir: Path, trial_id: str) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ray.tune.Checkpoint) in a Ray task with ``cpus`` / ``gpus`` on ``test``: the
    split at ``image_size`` (sent through the object store), or where to load it on the task's node (the node-cache
    path: segtune.assets); writes and returns test_metrics.json's content."""
    import ray

    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def task(checkpoint, test_ref: list) -> dict[str, Any]:
        source = ray.get(test_ref[0])
        split = source.load(image_size, "test") if isinstance(source, DataRecipe) else source
        with checkpoint.as_directory() as folder:  # a local path, or downloaded from a URI
            return evaluate(os.path.join(folder, CHECKPOINT_FILE), split)

    metrics = ray.get(task.remote(checkpoint, [ray.put(test)]))
    metrics = {"checkpoint": checkpoint_location(checkpoint, CHECKPOINT_FILE), "trial_id": trial_id, **metrics}
    write_text_atomic(experiment_dir / TEST_METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics
