"""What builds the pieces of a training, shared by every entry point: the command-line training
(``segcore.train``), prediction (``segcore.predict``), a sweep's trials and its final test.

Devices, precision and trainers are chosen here once, so a trial, a single training and the final test of a sweep
run the same way: the final test evaluates at the precision the trials trained at.
"""
from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.environments import LightningEnvironment

from segcore.callbacks import HParamsCallback, OverlayImagesCallback
from segcore.config import TrainConfig
from segcore.device import channels_last_of, on_gpu
from segcore.errors import UserError
from segcore.metrics_names import SWEEP_METRIC, SWEEP_MODE, eval_metrics, stage_metric
from segcore.model import SegmentationModule

log = logging.getLogger("segcore")


def lightning_devices(devices: str) -> Any:
    if devices == "auto":
        return "auto"
    parts = [int(p) for p in devices.strip("[]").split(",") if p.strip()]
    return parts[0] if len(parts) == 1 and "," not in devices else parts


def resolve_precision(precision: str, gpu: bool, bf16: bool) -> str:
    """Lightning's precision for ``precision``: "auto" is bf16-mixed on a GPU with bf16 (Ampere or newer; same range
    as float32, no loss scaling), 16-mixed on older GPUs (with loss scaling), 32-true on the CPU."""
    if precision != "auto":
        return precision
    if not gpu:
        return "32-true"
    return "bf16-mixed" if bf16 else "16-mixed"


def precision_of(cfg: TrainConfig) -> str:
    gpu = on_gpu(cfg)
    return resolve_precision(cfg.precision, gpu, gpu and torch.cuda.is_bf16_supported())


def describe_device(cfg: TrainConfig, data_path: str = "") -> str:
    """One log line with every GPU-relevant choice, so a GPU run can be checked from its log; ``data_path``: where
    the batches come from (``PetsDataModule.data_path``), when known."""
    if on_gpu(cfg):
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        where = f"GPU ({name}, {torch.cuda.device_count()} visible, bf16 {'supported' if bf16 else 'unsupported'})"
    else:
        where = "CPU"
    return (f"device: {where}; accelerator={cfg.accelerator} devices={cfg.devices} precision={precision_of(cfg)} "
            f"(asked: {cfg.precision}) channels_last={channels_last_of(cfg)} compile={cfg.compile} "
            f"pin_memory={torch.cuda.is_available()} non_blocking_copies={torch.cuda.is_available()}"
            + (f"; data: {data_path}" if data_path else ""))


def make_trainer(cfg: TrainConfig, output_dir: Optional[Path], callbacks: Iterable[pl.Callback] = (),
                 logger: Any = True, checkpoint: bool = True, **overrides: Any) -> pl.Trainer:
    """A Trainer for ``cfg``: TensorBoard in ``output_dir``, best-``val/iou`` checkpoint, overlays and HParams."""
    callbacks = list(callbacks)
    if logger is True:
        logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    if logger:
        metrics = tuple(stage_metric("val", m) for m in eval_metrics(cfg.class_names))
        callbacks += [HParamsCallback(cfg.to_dict(), metrics), OverlayImagesCallback()]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), filename="best",
                                         monitor=SWEEP_METRIC, mode=SWEEP_MODE, save_top_k=1, save_last=False,
                                         auto_insert_metric_name=False))
    kwargs = dict(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=lightning_devices(cfg.devices),
                  precision=precision_of(cfg), logger=logger or False, callbacks=callbacks,
                  enable_checkpointing=checkpoint, default_root_dir=str(output_dir) if output_dir else None,
                  log_every_n_steps=1, num_sanity_val_steps=0)
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def build_module(cfg: TrainConfig, encoder_state: Optional[dict] = None) -> SegmentationModule:
    module = SegmentationModule(cfg, encoder_state=encoder_state)
    if cfg.compile:
        log.info("compiling the network with torch.compile")
        module.net = torch.compile(module.net)
    return module


def quiet_lightning(placed: bool = False) -> None:
    """Keep the terminal to what users act on: no tips, no num_workers advice for in-memory datasets.

    ``placed``: this process was started by another scheduler (a Ray trial or task), on a machine that may have
    SLURM's srun: Lightning's hint to start it with srun (which it gives even with a cluster environment set, from
    its checkpoint connector) does not apply."""
    if placed:
        warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed", "pytorch_lightning.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # frozen parts are in eval mode on purpose (their BatchNorm statistics must not move)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # the epoch metrics are torchmetrics states that compute() already gathers from every DDP rank, and the lr is
    # the same on each: syncing them again would only cost a collective per value
    warnings.filterwarnings("ignore", message=".*It is recommended to use `self.log\\('(val|test)/(iou|per_image_iou|"
                                              "dice|per_image_dice)'.*|.*It is recommended to use `self.log\\('lr'.*")


def load_module(checkpoint: Path, map_location: str = "cpu") -> SegmentationModule:
    """The module saved in a checkpoint of ours (a training's or a sweep trial's), in eval mode; a file that is
    not one is a UserError naming it."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint}: not found (or not a file)")
    try:
        return SegmentationModule.from_checkpoint(str(checkpoint), map_location)
    # what torch.load and the state-dict lookup raise for a file that is not one of our checkpoints
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError, ValueError,
            TypeError) as err:
        raise UserError(f"checkpoint {checkpoint}: not a segcore SegmentationModule checkpoint "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def test_trainer(cfg: TrainConfig) -> pl.Trainer:
    """A Trainer that evaluates ``cfg``'s module on one device at the precision it trained at: nothing logged or
    saved (a sweep's final test). One process: no cluster environment to detect (in a Ray task on a SLURM
    allocation Lightning would take the SLURM_* variables it inherits for its own, and its SIGUSR1 requeue handler)."""
    return make_trainer(cfg, None, logger=False, checkpoint=False, devices=1, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[LightningEnvironment()])
