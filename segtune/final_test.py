"""The final test: the sweep's best checkpoint evaluated once on the test split, after the sweep.

It runs as a Ray task with one trial's resources (so on a GPU node when trials use GPUs), on the test split the
driver decoded before launch; the checkpoint is read wherever the sweep stored it (shared folder or URI).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segcore.decoded import DecodedSplit
from segcore.metrics_names import EVAL_METRICS, stage_metric
from segtune.storage import CHECKPOINT_FILE, TEST_METRICS_FILE, write_text_atomic


def evaluate(checkpoint_file: str, test: DecodedSplit, devices: int = 1) -> dict[str, Any]:
    """segcore's own test step on ``test`` with the module in ``checkpoint_file``: dataset and per-image IoU and
    Dice, and the loss. Runs wherever it is called (a GPU if one is visible)."""
    import pytorch_lightning as pl

    from segcore.data import PetsDataModule
    from segcore.model import SegmentationModule
    from segcore.train import quiet_lightning

    quiet_lightning()
    module = SegmentationModule.from_checkpoint(checkpoint_file)
    cfg = module.cfg.replace(num_workers=0)
    datamodule = PetsDataModule(cfg, decoded={"test": test})
    trainer = pl.Trainer(accelerator="auto", devices=devices, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    names = [stage_metric("test", m) for m in EVAL_METRICS]
    return {"images": len(test), "image_size": cfg.image_size, **{k: float(metrics[k]) for k in names}}


def run_final_test(checkpoint, tests: dict[int, DecodedSplit], image_size: int, cpus: float, gpus: float,
                   experiment_dir: Path, trial_id: str) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ray.tune.Checkpoint) in a Ray task with ``cpus`` / ``gpus``; writes and returns
    test_metrics.json's content."""
    import ray

    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def task(checkpoint, test_ref: list) -> dict[str, Any]:
        with checkpoint.as_directory() as folder:  # a local path, or downloaded from a URI
            return evaluate(os.path.join(folder, CHECKPOINT_FILE), ray.get(test_ref[0]))

    from segtune.results import checkpoint_location

    metrics = ray.get(task.remote(checkpoint, [ray.put(tests[image_size])]))
    metrics = {"checkpoint": checkpoint_location(checkpoint, CHECKPOINT_FILE), "trial_id": trial_id, **metrics}
    write_text_atomic(experiment_dir / TEST_METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics


def format_test(metrics: dict[str, Any]) -> str:
    return (f"Final test, best checkpoint on {metrics['images']} test images: IoU {metrics['test/iou']:.4f}, "
            f"per-image IoU {metrics['test/per_image_iou']:.4f}, Dice {metrics['test/dice']:.4f}, "
            f"per-image Dice {metrics['test/per_image_dice']:.4f}")
