"""The sweep a researcher writes by hand, as the libraries' own examples teach it: the baseline of
``bench/sweep_efficiency.py``.

- data: SMP's ``OxfordPetDataset`` (``segmentation_models_pytorch.datasets``), each item read, decoded and resized
  with PIL every epoch (SMP's ``SimpleOxfordPetDataset`` pattern; ``ResizeFlip`` from ``bench/data_throughput.py``);
- model: SMP's binary segmentation notebook's ``PetModel`` (Dice loss, ``smp.metrics.get_stats`` per step, IoU
  from the gathered step outputs at epoch end);
- Ray Tune: a function trainable running ``pl.Trainer.fit`` with Ray's documented
  ``TuneReportCheckpointCallback`` (report and checkpoint after every validation), one CPU per trial, FIFO, the
  grid as ``tune.grid_search``.

It reads the same generated files and runs the same grid (``sweep_efficiency.GRIDS``). SMP's "train" / "valid"
modes split trainval as every 10th name for validation; the sweep draws a tenth at random: same counts.

    python -m bench.plain_sweep --data-dir DIR --storage-path DIR --grid unet-lr-bs --image-size 64 --epochs 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.datasets import OxfordPetDataset
from torch.utils.data import DataLoader

from bench.data_throughput import ResizeFlip


class PetModel(pl.LightningModule):
    """SMP's notebook module (examples/binary_segmentation_intro.ipynb), its optimizer taken from the config."""

    def __init__(self, arch: str, encoder_name: str, lr: float, weight_decay: float):
        super().__init__()
        self.model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None, in_channels=3,
                                      classes=1)
        # the notebook reads ImageNet's statistics with smp.encoders.get_preprocessing_params, which SMP 0.6
        # fetches from the Hugging Face hub (no network here): the same values, written out
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.loss_fn = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.lr, self.weight_decay = lr, weight_decay
        self.outputs: dict[str, list] = {"train": [], "valid": []}

    def forward(self, image):
        return self.model((image.float() / 255 - self.mean) / self.std)

    def shared_step(self, batch, stage):
        image, mask = batch["image"], batch["mask"].float()
        logits = self(image)
        loss = self.loss_fn(logits, mask)
        pred = (logits.sigmoid() > 0.5).float()
        tp, fp, fn, tn = smp.metrics.get_stats(pred.long(), mask.long(), mode="binary")
        self.outputs[stage].append({"loss": loss.detach(), "tp": tp, "fp": fp, "fn": fn, "tn": tn})
        return loss

    def shared_epoch_end(self, stage):
        outs = self.outputs[stage]
        tp, fp, fn, tn = (torch.cat([x[k] for x in outs]) for k in ("tp", "fp", "fn", "tn"))
        self.log_dict({f"{stage}_per_image_iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise"),
                       f"{stage}_dataset_iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"),
                       f"{stage}_loss": torch.stack([x["loss"] for x in outs]).mean()}, prog_bar=True)
        outs.clear()

    def training_step(self, batch, batch_idx):
        return self.shared_step(batch, "train")

    def on_train_epoch_end(self):
        self.shared_epoch_end("train")

    def validation_step(self, batch, batch_idx):
        return self.shared_step(batch, "valid")

    def on_validation_epoch_end(self):
        self.shared_epoch_end("valid")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def train_fn(config: dict) -> None:
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    torch.set_num_threads(1)
    size = config["image_size"]
    train = OxfordPetDataset(config["data_dir"], mode="train", transform=ResizeFlip(size))
    valid = OxfordPetDataset(config["data_dir"], mode="valid", transform=ResizeFlip(size))
    bs = config["batch_size"]
    model = PetModel(config["arch"], config["encoder"], config["lr"], config.get("weight_decay", 0.0))
    trainer = pl.Trainer(max_epochs=config["epochs"], accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0,
                         callbacks=[TuneReportCheckpointCallback({"iou": "valid_dataset_iou"}, on="validation_end")])
    trainer.fit(model, DataLoader(train, batch_size=bs, shuffle=True, drop_last=True),
                DataLoader(valid, batch_size=bs))


def main() -> None:
    from ray import tune

    from bench.sweep_efficiency import GRIDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--storage-path", required=True)
    p.add_argument("--grid", choices=sorted(GRIDS), default="unet-lr-bs")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    fixed, searched = GRIDS[args.grid]
    space = {"arch": fixed["arch"], "encoder": fixed["encoder"], "image_size": args.image_size, "epochs": args.epochs,
             "data_dir": os.path.abspath(args.data_dir), **{k: v for k, v in fixed.items() if k not in searched},
             **{k: tune.grid_search(v) for k, v in searched.items()}}
    started = time.perf_counter()
    # A Ray of its own, as tune_main.py starts: Tune's implicit ray.init() would join any Ray that `ray start` left
    # running on this machine (another benchmark's head, or the test suite's shared one) and run the trials there
    import ray

    ray.init(address="local")
    tuner = tune.Tuner(tune.with_resources(train_fn, {"cpu": 1}), param_space=space,
                       tune_config=tune.TuneConfig(metric="iou", mode="max", num_samples=1),
                       run_config=tune.RunConfig(name="plain", storage_path=os.path.abspath(args.storage_path),
                                                 verbose=0))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        sys.exit(f"plain sweep: {len(errors)} trial(s) failed: {errors[0]}")
    best = results.get_best_result()
    print(f"plain sweep: {len(results)} trials in {time.perf_counter() - started:.1f}s, best iou "
          f"{best.metrics['iou']:.4f}")


if __name__ == "__main__":
    main()
