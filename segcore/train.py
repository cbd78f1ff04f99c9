"""Train one segmentation model on Oxford-IIIT Pet: ``python -m segcore.train --lr 1e-4 --batch_size 32 ...``.

Fits, validates and tests (on the test split) with the best checkpoint, and writes to ``--output_dir``: TensorBoard
logs, ``checkpoints/best.ckpt``, the resolved ``config.yaml`` and ``metrics.json``.

"The original example" (README): SMP's binary segmentation notebook, examples/binary_segmentation_intro.ipynb in
https://github.com/qubvel-org/segmentation_models.pytorch (FPN-resnet34 on Oxford-IIIT Pet with Lightning), as a
command line with the flags --lr --batch_size --wd --freeze_encoder --freeze_head --freeze_decoder, kept here.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import pytorch_lightning as pl

from segcore.build import build_module, describe_device, make_trainer, quiet_lightning
from segcore.config import TrainConfig, read_mapping
from segcore.data.datamodule import PetsDataModule
from segcore.data.dataset import classes_for
from segcore.errors import UserError, cli_entry

log = logging.getLogger("segcore")

# flag -> config key, for the original example's spelling
FLAG_KEYS = {"wd": "weight_decay"}


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
    # a folder of one's own names its classes; the config (and so the checkpoint) carries them
    cfg = datamodule.cfg = cfg.replace(classes=classes_for(cfg.classes, summary, cfg.data_dir))
    module = build_module(cfg)  # fails fast on unavailable weights
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(output_dir / "config.yaml")
    for line in summary.plan_lines(cfg.image_size):
        log.info("%s", line)
    trainer = make_trainer(cfg, output_dir, enable_progress_bar=progress)
    datamodule.setup("fit")
    log.info(describe_device(cfg, datamodule.data_path(trainer.strategy.root_device, trainer.world_size)[1]))
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
    p.add_argument("--data_dir", help="Oxford-IIIT Pet, or a folder of images and masks (README, 'Your own data') "
                                      f"(default {d.data_dir})")
    p.add_argument("--optimizer", help=f"sgd | adam | adamw | adagrad | rmsprop (default {d.optimizer})")
    p.add_argument("--scheduler", help="none | step | exponential | cosine | onecycle | cyclic | plateau "
                                       f"(default {d.scheduler})")
    p.add_argument("--loss", help=f"bce | dice | focal | jaccard | dice+bce (default {d.loss})")
    p.add_argument("--border", help="Oxford-IIIT Pet's trimap border as pet | background | ignore, or class (the "
                   f"trimap's three classes) (default {d.border})")
    p.add_argument("--val_fraction", type=float, help="share of Pets' trainval used for validation, or of the pairs "
                                                      "of a folder without split files (default "
                                                      f"{d.val_fraction})")
    p.add_argument("--test_fraction", type=float, help="share of the pairs tested on, for a folder without split "
                                                       f"files (default {d.test_fraction})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--num_workers", type=int, help=f"data loader processes (default {d.num_workers})")
    p.add_argument("--accelerator", help=f"auto | cpu | gpu (default {d.accelerator})")
    p.add_argument("--devices", help=f"auto, a count or a list like 0,1 (default {d.devices})")
    p.add_argument("--precision", help=f"auto (bf16/16-mixed on GPUs, 32 on CPU) | 32-true | 16-mixed | "
                                       f"bf16-mixed ... (default {d.precision})")
    p.add_argument("--channels_last", nargs="?", const="true", metavar="true|false",
                   help="NHWC memory format (default: on a GPU only, where it speeds convolutions up)")
    p.add_argument("--data_path", help="auto | device | loader: batches cut from the split held on the device, or "
                                       "copied from the host per batch (default auto: on a GPU when the split fits "
                                       "in a quarter of its memory)")
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
