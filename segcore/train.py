"""Train one segmentation model on Oxford-IIIT Pet: ``python -m segcore.train --lr 1e-4 --batch_size 32 ...``.

Fits, validates and tests (on the test split) with the best checkpoint, and writes to ``--output_dir``: TensorBoard
logs, ``checkpoints/best.ckpt``, the resolved ``config.yaml`` and ``metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from segcore.callbacks import HParamsCallback, OverlayImagesCallback
from segcore.config import TrainConfig, read_mapping
from segcore.data import PetsDataModule
from segcore.errors import UserError, cli_entry
from segcore.metrics_names import SWEEP_METRIC, SWEEP_MODE
from segcore.model import SegmentationModule

log = logging.getLogger("segcore")

# flag -> config key, for the original example's spelling
FLAG_KEYS = {"wd": "weight_decay"}


def lightning_devices(devices: str) -> Any:
    if devices == "auto":
        return "auto"
    parts = [int(p) for p in devices.strip("[]").split(",") if p.strip()]
    return parts[0] if len(parts) == 1 and "," not in devices else parts


def on_gpu(cfg: TrainConfig) -> bool:
    return torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")


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


def describe_device(cfg: TrainConfig) -> str:
    """One log line with every GPU-relevant choice, so a GPU run can be checked from its log."""
    if on_gpu(cfg):
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        where = f"GPU ({name}, {torch.cuda.device_count()} visible, bf16 {'supported' if bf16 else 'unsupported'})"
    else:
        where = "CPU"
    return (f"device: {where}; accelerator={cfg.accelerator} devices={cfg.devices} precision={precision_of(cfg)} "
            f"(asked: {cfg.precision}) channels_last={cfg.channels_last} compile={cfg.compile} "
            f"pin_memory={torch.cuda.is_available()} non_blocking_copies={torch.cuda.is_available()}")


def make_trainer(cfg: TrainConfig, output_dir: Optional[Path], callbacks: Iterable[pl.Callback] = (),
                 logger: Any = True, checkpoint: bool = True, **overrides: Any) -> pl.Trainer:
    """A Trainer for ``cfg``: TensorBoard in ``output_dir``, best-``val/iou`` checkpoint, overlays and HParams."""
    callbacks = list(callbacks)
    if logger is True:
        logger = TensorBoardLogger(save_dir=str(output_dir), name="", version="", default_hp_metric=False)
    if logger:
        callbacks += [HParamsCallback(cfg.to_dict()), OverlayImagesCallback()]
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
    module = SegmentationModule(cfg.to_dict(), encoder_state=encoder_state)
    if cfg.compile:
        log.info("compiling the network with torch.compile")
        module.net = torch.compile(module.net)
    return module


def quiet_lightning() -> None:
    """Keep the terminal to what users act on: no tips, no num_workers advice for in-memory datasets."""
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed", "pytorch_lightning.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # frozen parts are in eval mode on purpose (their BatchNorm statistics must not move)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def run(cfg: TrainConfig, output_dir: Path, download: bool = False, progress: bool = True) -> dict[str, Any]:
    """Check everything, fit, then validate and test the best checkpoint; returns the metrics written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir}: exists and is not a folder")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise UserError(f"--output_dir {output_dir}: already holds files; choose an empty or new folder "
                        "(nothing is overwritten)")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = PetsDataModule(cfg, download=download)
    datamodule.prepare_data()
    summary = datamodule.check()  # every data problem reported before any training starts
    module = build_module(cfg)  # fails fast on unavailable weights
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(output_dir / "config.yaml")
    log.info("data: %s (train %d, val %d, test %d images at %dpx)", summary.root, summary.train, summary.val,
             summary.test, cfg.image_size)
    log.info(describe_device(cfg))
    trainer = make_trainer(cfg, output_dir, enable_progress_bar=progress)
    trainer.fit(module, datamodule=datamodule)
    best = trainer.checkpoint_callback.best_model_path or None
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    metrics = {"val": {k: float(v) for k, v in val.items()}, "test": {k: float(v) for k, v in test.items()},
               "best_checkpoint": str(Path(best).resolve()) if best else None, "epochs": trainer.current_epoch}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segcore.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig()
    p.add_argument("--config", help="YAML or JSON file of config keys; flags given here override it")
    p.add_argument("--output_dir", default="outputs/train", help="where logs, checkpoint and metrics go")
    p.add_argument("--download", action="store_true", help="fetch the dataset into --data_dir if absent")
    # the original example's flags
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    p.add_argument("--batch_size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--wd", type=float, help=f"weight decay (default {d.weight_decay})")
    p.add_argument("--freeze_encoder", action="store_const", const=True, help="do not train the encoder")
    p.add_argument("--freeze_decoder", action="store_const", const=True, help="do not train the decoder")
    p.add_argument("--freeze_head", action="store_const", const=True, help="do not train the segmentation head")
    # everything else in TrainConfig
    p.add_argument("--arch", help=f"SMP architecture (default {d.arch})")
    p.add_argument("--encoder", help=f"SMP encoder or tu-<timm model> (default {d.encoder})")
    p.add_argument("--encoder_weights", help="imagenet | none | path to an encoder state dict (default imagenet)")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--image_size", type=int, help=f"square input size, a multiple of 32 (default {d.image_size})")
    p.add_argument("--data_dir", help=f"folder with the Oxford-IIIT Pet layout (default {d.data_dir})")
    p.add_argument("--optimizer", help=f"sgd | adam | adamw | adagrad | rmsprop (default {d.optimizer})")
    p.add_argument("--scheduler", help="none | step | exponential | cosine | onecycle | cyclic | plateau "
                                       f"(default {d.scheduler})")
    p.add_argument("--loss", help=f"bce | dice | focal | jaccard | dice+bce (default {d.loss})")
    p.add_argument("--border", help=f"trimap border as pet | background | ignore (default {d.border})")
    p.add_argument("--val_fraction", type=float, help=f"share of trainval used for validation (default "
                                                      f"{d.val_fraction})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--num_workers", type=int, help=f"data loader processes (default {d.num_workers})")
    p.add_argument("--accelerator", help=f"auto | cpu | gpu (default {d.accelerator})")
    p.add_argument("--devices", help=f"auto, a count or a list like 0,1 (default {d.devices})")
    p.add_argument("--precision", help=f"auto (bf16/16-mixed on GPUs, 32 on CPU) | 32-true | 16-mixed | "
                                       f"bf16-mixed ... (default {d.precision})")
    p.add_argument("--channels_last", action="store_const", const=True, help="NHWC memory format (GPU speed-up)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the network")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = read_mapping(args.config) if args.config else {}
    source = args.config or "flags"
    TrainConfig.from_dict(values, source=source)  # report file problems against the file
    skip = {"config", "output_dir", "download"}
    flags = {FLAG_KEYS.get(k, k): v for k, v in vars(args).items() if k not in skip and v is not None}
    return TrainConfig.from_dict({**values, **flags}, source=f"{source} + flags" if flags else source)


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_lightning()
    cfg = config_from_args(args)
    metrics = run(cfg, Path(args.output_dir), download=args.download)
    print(f"val/iou {metrics['val'].get('val/iou', float('nan')):.4f}  "
          f"test/iou {metrics['test'].get('test/iou', float('nan')):.4f}  "
          f"-> {Path(args.output_dir) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
